"""The bundled WebSocket load tester.

Drives many concurrent connections against any RFC 6455 echo server, checks every
echo, measures latency corrected for coordinated omission in mergeable log-bucketed
histograms, and says when the load generator itself was the bottleneck.
Entry point: :func:`tornado_echo.loadtest.cli.main`.
"""

from __future__ import annotations

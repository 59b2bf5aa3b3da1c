"""What the server says about itself: Prometheus metrics, log output, log throttling."""

from __future__ import annotations

# Where prometheus_client's multiprocess mode keeps its files (workers > 1). Here, not in
# .metrics: the CLI sets it before anything imports prometheus_client, which reads it once.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

"""A serving process: lifecycle, the worker supervisor, systemd, fd limits, the event loop."""

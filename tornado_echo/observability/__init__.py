"""What the server says about itself: Prometheus metrics, log output, log throttling."""

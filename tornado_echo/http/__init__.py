"""The HTTP side of a connection before the upgrade: the listener, peers and trusted proxies,
who may read operator endpoints, and TLS."""

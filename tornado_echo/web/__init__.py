"""The Tornado Application: the echo handler, JSON endpoints, the operator API and console."""

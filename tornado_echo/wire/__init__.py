"""RFC 6455 and RFC 7692 without I/O: frames, close rules, the frame reader, deflate, handshake."""

"""pointillist.protocol."""

"""pointillist.node."""

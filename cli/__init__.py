"""pointillist.cli."""

"""The requester's side: find nodes, sign jobs, follow them, fail over, verify, fetch."""

"""pointillist.attestation."""

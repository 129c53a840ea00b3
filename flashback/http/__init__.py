"""The project's own server plumbing: one accept loop for every listener it owns."""

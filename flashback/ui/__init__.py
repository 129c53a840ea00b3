"""The daemon's web face (CONTRACT §9): a token-guarded UI on 127.0.0.1."""

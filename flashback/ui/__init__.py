"""The daemon's web face (INTERFACE §9): a token-guarded UI on 127.0.0.1."""

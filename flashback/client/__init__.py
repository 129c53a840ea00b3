"""The client side of the peer protocol: what reads a peer's answers."""

"""Reachability through relays: serving circuit relay v2, holding reservations when
private, and hole punching relayed connections (DCUtR)."""

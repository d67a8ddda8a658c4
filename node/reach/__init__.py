"""Reachability: whether the internet can dial this node (see NETWORK.md, section 9)."""

"""Overlay: the node's driver of the small-world overlay (poolai.mesh.overlay)."""

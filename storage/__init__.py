"""PoolAI storage: erasure-coded shares, manifests, placement and the LMDB share store.

May import mesh, never node.
"""

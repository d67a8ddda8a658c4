"""PoolAI mesh layer: wire format, libp2p host, overlay and gossip. Imports neither node nor storage."""

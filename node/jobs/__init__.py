"""Jobs: specs, dispatch to the nearest capable peer, execution in isolated workers."""

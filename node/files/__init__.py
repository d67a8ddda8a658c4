"""Files: the node's storage service over poolai.storage (put, get, repair, leases, audits)."""

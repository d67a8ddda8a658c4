"""Harness of ``scripts/sim_overlay.py``: latency model, lookup engine, the three systems."""

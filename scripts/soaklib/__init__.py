"""The chaos soak's pure parts: the workload's data (files, a job and its expected output)
and the verdicts drawn from what the soak recorded. ``scripts/soak.py`` drives them."""

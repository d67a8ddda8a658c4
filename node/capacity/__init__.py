"""Capacity: this machine's inventory, signed adverts of peers' capacity, ranking of capable peers."""

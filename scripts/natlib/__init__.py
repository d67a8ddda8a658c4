"""The NAT lab: home networks behind real iptables NATs, in network namespaces.

``topology`` describes a lab and plans its commands (pure), ``classify`` tells how
two nodes are connected (pure), ``netns`` builds and removes the namespaces, ``lab``
runs ``poolai node run`` processes inside them. ``scripts/nat_lab.py`` is the command;
``tests/test_nat_lab_live.py`` and later NAT traversal work reuse the pieces.
"""

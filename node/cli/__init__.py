"""Command-line interface: the ``poolai`` parser, its errors and the local API client."""

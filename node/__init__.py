"""PoolAI node: the composition root, CLI, config, local API and services built on mesh and storage."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("poolai")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

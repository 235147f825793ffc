"""kcloud: an open platform that turns a farm of heterogeneous AI accelerators into a cloud AI service."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kcloud")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]

"""gatectl: the edge gate-controller daemon for the checkpoint lanes of a bonded zone."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("gatectl")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

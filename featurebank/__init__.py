"""featurebank: the command line and HTTP service over export, extractor and classical."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("featurebank")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

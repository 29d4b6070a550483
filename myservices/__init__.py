"""myservices: a Twisted multi-protocol server daemon."""

__version__ = "0.1.0"

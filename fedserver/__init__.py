"""fedserver: a federating Matrix homeserver on Twisted with pluggable room authorization."""

__version__ = "0.1.0"

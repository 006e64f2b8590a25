"""regauth: a token issuer for the registry token authentication protocol."""

__version__ = "0.1.0"

"""imagegate: a self-hosted image generation and editing API server."""

__version__ = "0.1.0"

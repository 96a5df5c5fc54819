"""Local stand-ins for external services: they validate what the real ones validate."""

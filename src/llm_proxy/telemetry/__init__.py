"""Observability of the proxy itself: logs, metrics, tracing."""

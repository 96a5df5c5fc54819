"""llm-proxy: a transparent, secure gateway in front of OpenAI-compatible LLM APIs."""

__version__ = "0.1.0"

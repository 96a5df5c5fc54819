"""OpenTelemetry GenAI semantic-convention names the spans use (v1.41 by default).

`OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental` switches to the names queued after
v1.41 in `semantic-conventions-genai`. For the attributes a proxy can fill, the only rename so
far is `gen_ai.usage.cache_creation.input_tokens` → `gen_ai.usage.cache_write.input_tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass

LATEST_OPT_IN = "gen_ai_latest_experimental"


@dataclass(frozen=True, slots=True)
class GenAiNames:
    cache_write_tokens: str


V1_41 = GenAiNames(cache_write_tokens="gen_ai.usage.cache_creation.input_tokens")
LATEST = GenAiNames(cache_write_tokens="gen_ai.usage.cache_write.input_tokens")


def names_for(opt_in: str) -> GenAiNames:
    return LATEST if LATEST_OPT_IN in {part.strip() for part in opt_in.split(",")} else V1_41


OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
}
"""Request path → `gen_ai.operation.name`; other paths get plain HTTP client spans."""

PROVIDERS = {
    "azure": "azure.ai.openai", "azure_openai": "azure.ai.openai", "bedrock": "aws.bedrock",
    "gemini": "gcp.gemini", "vertex": "gcp.vertex_ai", "vertex_ai": "gcp.vertex_ai", "mistral": "mistral_ai",
    "xai": "x_ai", "watsonx": "ibm.watsonx.ai",
}
"""Our provider names whose `gen_ai.provider.name` differs (openai, anthropic, groq... are the same)."""


def provider_name(provider: str) -> str:
    return PROVIDERS.get(provider, provider)


REQUEST_PARAMETERS = {
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "max_output_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "seed": "gen_ai.request.seed",
}

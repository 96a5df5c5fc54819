"""Request and response models of the management API; they are also its OpenAPI document.

Request models validate strictly (no type coercion, no unknown fields) and every rule a handler
enforces is spelled in the schema too, so the published document says exactly what is accepted.
Messages for the predecessor's well-known failures are kept in `MESSAGES` per model.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
NO_CONTROL_PATTERN = r"^[^\x00-\x1f\x7f]*$"
NAME_PATTERN = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
OBFUSCATED_PATTERN = r"\.\.\.|\*\*\*\*"
MAX_DURATION_MINUTES = 525_600
MAX_REQUESTS_LIMIT = 2_147_483_647
METADATA_MAX_BYTES = 16 * 1024
METADATA_MAX_DEPTH = 32
MAX_USD = 1e12

MessageKey = tuple[str, str]


def _drop_null_branch(prop: dict[str, Any]) -> None:
    branches = prop.pop("anyOf", None)
    for branch in branches or ():
        if branch.get("type") != "null":
            prop.update(branch)


def _finish_schema(schema: dict[str, Any], cls: type[Any]) -> None:
    """Optional fields are documented as "may be omitted", without `default: null`."""
    for name, prop in schema.get("properties", {}).items():
        if prop.get("default", 0) is None:
            del prop["default"]
        if name in cls.NOT_NULL:
            _drop_null_branch(prop)
    schema.update(cls.SCHEMA_EXTRA)


class RequestModel(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", json_schema_extra=_finish_schema)
    MESSAGES: ClassVar[dict[MessageKey, str]] = {}
    NOT_NULL: ClassVar[tuple[str, ...]] = ()
    """Optional fields that may be omitted but not sent as null."""
    SCHEMA_EXTRA: ClassVar[dict[str, Any]] = {}

    @model_validator(mode="before")
    @classmethod
    def _reject_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in cls.NOT_NULL:
                if name in data and data[name] is None:
                    raise PydanticCustomError(
                        "null_not_allowed", "{field} must not be null", {"field": name}
                    )
        return data


def _integral(value: Any) -> Any:
    """JSON Schema counts 5.0 as an integer, so a strict integer field accepts it too."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


ProjectName = Annotated[str, Field(
    min_length=1, max_length=255, pattern=NAME_PATTERN,
    description="Unique; at least one visible character, no control characters.",
)]
Metadata = Annotated[dict[str, Any] | None, Field(
    description=f"Free-form JSON object attached to the token and to its events "
    f"(at most {METADATA_MAX_BYTES} bytes as JSON, {METADATA_MAX_DEPTH} levels deep); "
    "null means none.",
)]
MaxRequests = Annotated[int | None, Field(
    ge=0, le=MAX_REQUESTS_LIMIT, description="Lifetime request quota; 0 or null means unlimited.",
), BeforeValidator(_integral)]
BudgetPeriod = Literal["daily", "weekly", "monthly", "total"]
AlertThreshold = Annotated[float | None, Field(
    ge=0, le=MAX_USD, allow_inf_nan=False,
    description="USD: when the spend of the current budget period reaches it, a `cost.threshold_exceeded` "
    "telemetry event and audit entry are emitted, once per period. null: no alert.",
)]
MaxBudget = Annotated[float | None, Field(
    ge=0, le=MAX_USD, allow_inf_nan=False,
    description="USD: once the spend of the current budget period reaches it, calls are refused with 429 "
    "`budget_exceeded` until the period ends. null: no budget.",
)]
LIMIT_MESSAGES: dict[MessageKey, str] = {
    (name, kind): f"{name} must be {rule}"
    for name in ("cost_alert_threshold", "max_budget")
    for kind, rule in (("greater_than_equal", ">= 0"), ("less_than_equal", f"<= {MAX_USD:.0f}"),
                       ("finite_number", "a finite number"))
}
PeriodField = Annotated[BudgetPeriod, Field(
    description="UTC calendar period of the budget and the alert: daily, weekly (from Monday), monthly, "
    "or total (all time).",
)]


class ProjectCreate(RequestModel):
    name: ProjectName
    api_key: Annotated[str, Field(
        min_length=1, max_length=4096, pattern=NO_CONTROL_PATTERN,
        description="The upstream provider key, in full (obfuscated keys are refused).",
        json_schema_extra={"not": {"pattern": OBFUSCATED_PATTERN}},
    )]
    cost_alert_threshold: AlertThreshold = None
    max_budget: MaxBudget = None
    budget_period: PeriodField = "monthly"

    NOT_NULL: ClassVar[tuple[str, ...]] = ("budget_period",)
    MESSAGES: ClassVar[dict[MessageKey, str]] = {
        ("name", "missing"): "name and api_key are required",
        ("name", "string_too_short"): "name and api_key are required",
        ("api_key", "missing"): "name and api_key are required",
        ("api_key", "string_too_short"): "name and api_key are required",
        ("name", "string_pattern_mismatch"):
            "name must contain a visible character and no control characters",
        **LIMIT_MESSAGES,
    }


class ProjectUpdate(RequestModel):
    name: ProjectName | None = None
    api_key: Annotated[str | None, Field(
        max_length=4096, pattern=NO_CONTROL_PATTERN,
        description="New upstream key; an empty string keeps the current one.",
        json_schema_extra={"not": {"pattern": OBFUSCATED_PATTERN}},
    )] = None
    is_active: bool | None = None
    revoke_tokens: Annotated[bool | None, Field(
        description="Only together with is_active=false: also revoke every token of the project.",
    )] = None
    cost_alert_threshold: AlertThreshold = None
    max_budget: MaxBudget = None
    budget_period: PeriodField | None = None

    NOT_NULL: ClassVar[tuple[str, ...]] = ("name", "api_key", "is_active", "revoke_tokens", "budget_period")
    SCHEMA_EXTRA: ClassVar[dict[str, Any]] = {"dependentSchemas": {
        "revoke_tokens": {"required": ["is_active"], "properties": {"is_active": {"const": False}}},
    }}
    MESSAGES: ClassVar[dict[MessageKey, str]] = {
        ("name", "string_too_short"):
            "name must contain a visible character and no control characters",
        ("name", "string_pattern_mismatch"):
            "name must contain a visible character and no control characters",
        **LIMIT_MESSAGES,
    }


class TokenCreate(RequestModel):
    # Field order is the predecessor's validation order: the first failing field is reported.
    duration_minutes: Annotated[int, Field(
        ge=1, le=MAX_DURATION_MINUTES, description="Lifetime of the token in minutes (max 365 days).",
    ), BeforeValidator(_integral)]
    project_id: Annotated[str, Field(min_length=1, max_length=255)]
    max_requests: MaxRequests = None
    metadata: Metadata = None
    cost_alert_threshold: AlertThreshold = None
    max_budget: MaxBudget = None
    budget_period: PeriodField = "monthly"

    NOT_NULL: ClassVar[tuple[str, ...]] = ("budget_period",)
    MESSAGES: ClassVar[dict[MessageKey, str]] = {
        ("duration_minutes", "less_than_equal"): "duration_minutes exceeds maximum allowed",
        ("duration_minutes", "greater_than_equal"): "project_id and duration_minutes are required",
        ("duration_minutes", "missing"): "project_id and duration_minutes are required",
        ("project_id", "missing"): "project_id is required",
        ("project_id", "string_too_short"): "project_id is required",
        ("max_requests", "greater_than_equal"): "max_requests must be >= 0",
        **LIMIT_MESSAGES,
    }


class TokenUpdate(RequestModel):
    is_active: bool | None = None
    max_requests: MaxRequests = None
    metadata: Metadata = None
    cost_alert_threshold: AlertThreshold = None
    max_budget: MaxBudget = None
    budget_period: PeriodField | None = None

    NOT_NULL: ClassVar[tuple[str, ...]] = ("is_active", "budget_period")
    SCHEMA_EXTRA: ClassVar[dict[str, Any]] = {"minProperties": 1}
    MESSAGES: ClassVar[dict[MessageKey, str]] = {
        ("max_requests", "greater_than_equal"): "max_requests must be >= 0",
        **LIMIT_MESSAGES,
    }


REQUEST_MODELS: tuple[type[RequestModel], ...] = (ProjectCreate, ProjectUpdate, TokenCreate, TokenUpdate)


# --- responses ---------------------------------------------------------------------------------

class Error(BaseModel):
    """Every error of the management API: JSON, `application/json`."""

    error: str
    code: str | None = Field(default=None, description="Machine-readable code, when there is one.")
    message: str | None = Field(default=None, description="Extra explanation, when there is one.")


ThresholdOut = Annotated[float | None, Field(description="USD; null: no alert.")]
BudgetOut = Annotated[float | None, Field(description="USD; null: no budget.")]
SpendUsd = Annotated[float, Field(
    description="Spend of the current budget period (UTC) as recorded by the proxies, which write it every "
    "SPEND_FLUSH_INTERVAL (1 s by default).",
)]


class ProjectOut(BaseModel):
    id: str
    name: str
    api_key: str = Field(description="Obfuscated: first 8 + `...` + last 4 characters.")
    is_active: bool
    deactivated_at: datetime | None
    created_at: datetime
    updated_at: datetime
    cost_alert_threshold: ThresholdOut
    max_budget: BudgetOut
    budget_period: BudgetPeriod
    spend_usd: SpendUsd


class TokenOut(BaseModel):
    id: str
    token: str = Field(description="Obfuscated hint of the secret (`sk-abcd***...wxyz`).")
    project_id: str
    expires_at: datetime | None
    is_active: bool
    request_count: int
    max_requests: int | None = Field(description="null: unlimited.")
    cache_hit_count: int
    created_at: datetime
    last_used_at: datetime | None
    deactivated_at: datetime | None
    metadata: dict[str, Any]
    cost_alert_threshold: ThresholdOut
    max_budget: BudgetOut
    budget_period: BudgetPeriod
    spend_usd: SpendUsd


class TokenCreated(TokenOut):
    token: str = Field(description="The secret `sk-...` token. Shown only in this response.")
    token_hint: str = Field(description="The obfuscated form later listings show.")


class RevokeSummary(BaseModel):
    revoked_count: int
    already_revoked_count: int
    total_tokens: int


class AuditEventOut(BaseModel):
    id: str
    timestamp: datetime
    action: str
    actor: str
    outcome: str = Field(description="success, failure, denied or error.")
    project_id: str | None
    request_id: str | None
    correlation_id: str | None
    client_ip: str | None
    method: str | None
    path: str | None
    user_agent: str | None
    reason: str | None
    token_id: str | None
    metadata: str | None = Field(description="`details` as a JSON string (predecessor format).")
    details: dict[str, Any]


class Pagination(BaseModel):
    page: int
    page_size: int
    total_count: int
    total_pages: int
    has_next: bool
    has_prev: bool


class AuditPage(BaseModel):
    events: list[AuditEventOut]
    pagination: Pagination

"""Audit trail: who did what to which project or token, written to a JSONL file and the database."""

from llm_proxy.audit.recorder import OUTCOMES, AuditRecorder, audit_line

__all__ = ["OUTCOMES", "AuditRecorder", "audit_line"]

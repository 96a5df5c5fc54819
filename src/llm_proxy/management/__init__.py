"""Control plane: the `/manage/*` API over projects, tokens and the audit trail."""

from llm_proxy.management.app import create_management_app
from llm_proxy.management.deps import ManagementDeps

__all__ = ["ManagementDeps", "create_management_app"]

"""What the management API needs from the rest of the process, handed in by the composition root."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from llm_proxy.audit import AuditRecorder
from llm_proxy.clock import Clock
from llm_proxy.settings import Settings
from llm_proxy.storage import Storage

log = logging.getLogger("llm_proxy.management")


def _ignore(_: str) -> None:
    return None


@dataclass(frozen=True)
class ManagementDeps:
    """`on_token_change(token_id)` / `on_project_change(project_id)` run after every successful
    mutation so that the proxy's caches drop the record at once; bulk operations on a project's
    tokens call `on_project_change` once.
    """

    settings: Settings
    storage: Storage
    audit: AuditRecorder
    clock: Clock
    on_token_change: Callable[[str], None] = _ignore
    on_project_change: Callable[[str], None] = _ignore

    def token_changed(self, token_id: str) -> None:
        _notify(self.on_token_change, token_id)

    def project_changed(self, project_id: str) -> None:
        _notify(self.on_project_change, project_id)


def _notify(callback: Callable[[str], None], record_id: str) -> None:
    try:
        callback(record_id)
    except Exception:  # boundary: the change is committed; a cache hook must not turn it into a 500
        log.exception("change hook %r failed for %s", callback, record_id)


def get_deps(request: Request) -> ManagementDeps:
    deps: ManagementDeps = request.app.state.management
    return deps


Deps = Annotated[ManagementDeps, Depends(get_deps)]

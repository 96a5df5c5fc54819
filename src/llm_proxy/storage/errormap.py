"""Turn driver and SQLAlchemy failures into the package's StorageError / DuplicateError."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import exc as sa_exc

from llm_proxy.errors import DuplicateError, StorageError


def describe(exc: BaseException) -> str:
    """The driver's own message, without SQL text or bound parameters (they may hold secrets)."""
    if isinstance(exc, sa_exc.StatementError) and exc.orig is not None:
        return f"{type(exc.orig).__name__}: {exc.orig}".strip()
    return f"{type(exc).__name__}: {exc}".strip()


def _is_unique_violation(exc: sa_exc.IntegrityError) -> bool:
    # SQLite "UNIQUE constraint failed", PostgreSQL "duplicate key ... unique constraint",
    # MySQL/MariaDB 1062 "Duplicate entry".
    text = str(exc.orig).lower()
    return "unique" in text or "duplicate" in text


@asynccontextmanager
async def translate_errors(operation: str) -> AsyncIterator[None]:
    """Raise StorageError (DuplicateError for unique violations) naming `operation`."""
    try:
        yield
    except StorageError:
        raise
    except sa_exc.IntegrityError as exc:
        if _is_unique_violation(exc):
            raise DuplicateError(f"{operation}: already exists ({describe(exc)})") from exc
        raise StorageError(f"{operation}: constraint violated ({describe(exc)})") from exc
    except (sa_exc.SQLAlchemyError, OSError) as exc:
        raise StorageError(f"{operation}: database unavailable ({describe(exc)})") from exc

"""SQLite connection set-up: switching a new database to WAL from several connections at once."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from llm_proxy.storage.engine import _use_wal


def test_connections_racing_to_switch_a_new_database_to_wal_all_succeed(tmp_path: Path) -> None:
    """SQLite answers this race "database is locked" at once, without its busy timeout; seen in CI as a
    failed concurrent `migrate up` (four plain sqlite3 connections hit it in about a quarter of trials)."""
    failures: list[str] = []
    for trial in range(40):
        path = tmp_path / f"{trial}.db"
        ready = threading.Barrier(4)

        def connect_and_switch(path: Path = path, ready: threading.Barrier = ready) -> None:
            connection = sqlite3.connect(path, timeout=30, check_same_thread=False)
            try:
                connection.execute("PRAGMA busy_timeout = 30000")
                ready.wait()
                _use_wal(connection.cursor())
                assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            except (sqlite3.OperationalError, AssertionError) as exc:
                failures.append(repr(exc))
            finally:
                connection.close()

        threads = [threading.Thread(target=connect_and_switch) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []

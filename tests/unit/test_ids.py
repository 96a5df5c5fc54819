"""Request and event ids: valid RFC 9562 UUID strings, distinct, and different in forked workers."""

from __future__ import annotations

import os
import uuid

from llm_proxy.clock import uuid4_str, uuid7, uuid7_str


def test_request_ids_are_distinct_version_4_uuids() -> None:
    ids = [uuid4_str() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    parsed = [uuid.UUID(i) for i in ids[:100]]
    assert all(u.version == 4 and u.variant == uuid.RFC_4122 and str(u) == i for u, i in zip(parsed, ids, strict=False))


def test_event_ids_are_version_7_and_ordered_by_time() -> None:
    first = uuid.UUID(uuid7_str())
    assert (first.version, first.variant) == (7, uuid.RFC_4122)
    assert uuid7().int >> 80 >= first.int >> 80  # the leading 48 bits are the millisecond clock


def test_a_forked_worker_does_not_repeat_its_parent_s_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its random state must have been reseeded at fork
        os.write(write, (uuid4_str() + uuid7_str()[14:]).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert child != uuid4_str() + uuid7_str()[14:]
    assert len(child) == 36 + 22

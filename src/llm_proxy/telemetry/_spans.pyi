from collections.abc import Callable
from typing import Any

class Encoder:
    """`call_spans.CallEncoder` in C, without captured message content (see _spans.c)."""

    def __init__(self, server_address: str, server_port: int, cache_write_name: str, operations: dict[str, str],
                 providers: dict[str, str], parameters: dict[str, str], loads: Callable[[bytes], Any],
                 decode_error: type[Exception]) -> None: ...
    def __call__(self, record: tuple[Any, ...], /) -> bytes: ...

def pack(record: object, /) -> bytes:
    """A call record (None, bool, int, float, str, bytes, tuple, list, dict) for the exporter pipe."""

def unpack(data: bytes, /) -> list[Any]:
    """The values packed one after another in `data` (a bytearray comes back as bytes)."""

def pack_call(ctx: object, trace: tuple[Any, ...], m: dict[str, Any], md: dict[str, Any], end_ns: int, now: float,
              max_deferred_body: int, /) -> bytes | None:
    """`Tracing._record`'s record, packed; None when a body is too large to leave to the exporter."""

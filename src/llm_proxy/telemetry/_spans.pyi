from collections.abc import Callable
from typing import Any

class Encoder:
    """`call_spans.CallEncoder` in C, without captured message content (see _spans.c)."""

    def __init__(self, server_address: str, server_port: int, cache_write_name: str, operations: dict[str, str],
                 providers: dict[str, str], parameters: dict[str, str], loads: Callable[[bytes], Any],
                 decode_error: type[Exception]) -> None: ...
    def __call__(self, record: tuple[Any, ...], /) -> bytes: ...

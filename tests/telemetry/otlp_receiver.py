"""A local OTLP/HTTP trace receiver: a threaded HTTP server on 127.0.0.1 decoding protobuf exports.

In tests: `with otlp_receiver() as receiver: ...`; `receiver.replies` scripts the answers to the
next exports (status, headers), to exercise retries. Standalone, as the collector of a benchmark:
`python -m tests.telemetry.otlp_receiver --port 4318 --seconds 600` (prints what it received every
10 s; `--no-decode` only counts bytes, so the receiver costs next to no CPU).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass
class ReceivedSpan:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status_code: int
    resource: dict[str, Any]
    trace_state: str = ""
    flags: int = 0
    start: int = 0
    end: int = 0
    scope: tuple[str, str] = ("", "")


@dataclass
class Receiver:
    url: str
    decode: bool = True
    spans: list[ReceivedSpan] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    replies: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    """Scripted answers for the next exports, in order; then 200."""
    posts: int = 0
    received_bytes: int = 0

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedSpan]:
        deadline = time.monotonic() + timeout
        while len(self.spans) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.spans)

    def take(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        self.posts += 1
        self.received_bytes += len(body)
        if self.replies:
            return self.replies.pop(0)
        if self.decode:
            self.content_types.append(headers.get("content-type", ""))
            self.headers.append(headers)
            self.raw.append(body)
            self.spans.extend(decode(body))
        return 200, {}


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def _attributes(items: Any) -> dict[str, Any]:
    return {item.key: _value(item.value) for item in items}


def decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope = (scope_spans.scope.name, scope_spans.scope.version)
            spans.extend(ReceivedSpan(
                name=s.name, kind=s.kind, trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                parent_span_id=s.parent_span_id.hex(), attributes=_attributes(s.attributes),
                status_code=s.status.code, resource=resource, trace_state=s.trace_state, flags=s.flags,
                start=s.start_time_unix_nano, end=s.end_time_unix_nano, scope=scope) for s in scope_spans.spans)
    return spans


@contextmanager
def otlp_receiver(port: int = 0, *, decode: bool = True) -> Iterator[Receiver]:
    receiver = Receiver(url="", decode=decode)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as collectors do

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status, extra = receiver.take(body, {k.lower(): v for k, v in self.headers.items()})
            reply = ExportTraceServiceResponse().SerializeToString() if status == 200 else b""
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description="A local OTLP/HTTP trace receiver (stops by itself).")
    parser.add_argument("--port", type=int, default=4318)
    parser.add_argument("--seconds", type=float, default=600.0, help="stop after this long")
    parser.add_argument("--no-decode", action="store_true", help="only count what arrives")
    args = parser.parse_args()
    with otlp_receiver(args.port, decode=not args.no_decode) as receiver:
        print(receiver.url, flush=True)
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            time.sleep(min(10.0, max(deadline - time.monotonic(), 0.0)))
            print(f"posts {receiver.posts}, bytes {receiver.received_bytes}, spans {len(receiver.spans)}",
                  flush=True)
            receiver.spans.clear()
            receiver.raw.clear()


if __name__ == "__main__":
    main()

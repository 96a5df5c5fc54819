"""uvicorn's HTTP protocol (httptools), answering requests it cannot parse in JSON.

A request that is not valid HTTP (an unknown method, a NUL in a header, a bad chunk size, both
Content-Length and Transfer-Encoding...) never reaches the app: uvicorn answers 400 itself, in
text/plain. Clients of an OpenAI-compatible API expect `{"error": {...}}`, so this protocol gives
the same answer in the proxy's error envelope.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from llm_proxy.errors import openai_error_body


class JsonErrorHttpToolsProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        body = openai_error_body(msg, "invalid_request_error", "invalid_http_request")
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode(),
                 b"\r\nconnection: close\r\n\r\n", body]
        self.transport.write(b"".join(head))
        self.transport.close()


"""Body decoding: every content coding, cut bodies, binary and multipart placeholders."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest
import zstandard

from llm_proxy.dispatcher.decode import decode_body, decompress, looks_like_sse, utf8_text

DOC = b'{"id": "chatcmpl-1", "text": "h\xc3\xa9llo"}'


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-15)
    return packer.compress(data) + packer.flush()


class TestDecompress:
    @pytest.mark.parametrize(("encoding", "packed"), [
        ("gzip", gzip.compress(DOC)),
        ("deflate", zlib.compress(DOC)),
        ("deflate", raw_deflate(DOC)),
        ("br", brotli.compress(DOC)),
        ("zstd", zstandard.ZstdCompressor().compress(DOC)),
        ("identity", DOC),
    ])
    def test_each_content_coding_is_undone(self, encoding: str, packed: bytes) -> None:
        assert decompress(packed, encoding) == (DOC, None)

    def test_stacked_codings_are_undone_last_first(self) -> None:
        packed = brotli.compress(gzip.compress(DOC))
        assert decompress(packed, "gzip, br") == (DOC, None)

    def test_a_cut_gzip_body_yields_what_arrived(self) -> None:
        text = "".join(f"data: {i}\n" for i in range(2000)).encode()
        packed = gzip.compress(text)
        inflated, problem = decompress(packed[: len(packed) // 2], "gzip")
        assert problem is None
        assert text.startswith(inflated)
        assert len(inflated) > 0

    def test_an_unknown_coding_is_reported_not_raised(self) -> None:
        data, problem = decompress(b"abc", "snappy")
        assert data == b"abc"
        assert problem is not None
        assert "snappy" in problem


class TestDecodeBody:
    def test_json_is_parsed(self) -> None:
        body = decode_body(gzip.compress(DOC), "application/json", "gzip")
        assert body.value == {"id": "chatcmpl-1", "text": "héllo"}

    def test_json_without_a_content_type_is_sniffed(self) -> None:
        assert decode_body(b' [1, 2]').value == [1, 2]

    def test_cut_json_stays_text(self) -> None:
        body = decode_body(DOC[:20], "application/json")
        assert body.value == DOC[:20].decode()
        assert body.text == body.value

    def test_binary_and_multipart_become_placeholders(self) -> None:
        assert decode_body(b"\x89PNG\r\n\x1a\n", "image/png").value == "<binary body omitted: 8 bytes>"
        assert decode_body(b"\xff\xfe\x00\x01", "").value == "<binary body omitted: 4 bytes>"
        multipart = decode_body(b"--x\r\nContent-Disposition: form-data", "multipart/form-data; boundary=x")
        assert multipart.value.startswith("<multipart body omitted")

    def test_a_utf8_character_cut_by_the_cap_is_dropped(self) -> None:
        assert utf8_text("héllo".encode()[:2]) == "h"
        assert utf8_text(b"\xffabc") is None

    def test_empty_body(self) -> None:
        assert decode_body(b"").value is None


def test_sse_is_recognised_by_content_type_or_shape() -> None:
    assert looks_like_sse("data: {}\n\n", "")
    assert looks_like_sse("event: x\ndata: {}\n\n", "")
    assert looks_like_sse("anything", "text/event-stream")
    assert not looks_like_sse('{"data": 1}', "application/json")

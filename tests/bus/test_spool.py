"""Spool: ordered append-only segments on disk, bounded, surviving a restart."""

from __future__ import annotations

from pathlib import Path

from llm_proxy.bus.spool import Spool


def segments(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("seg-*.spool"))


async def drain(spool: Spool, step: int = 3) -> list[bytes]:
    out: list[bytes] = []
    while frames := await spool.peek(step):
        out += frames
        spool.advance(len(frames))
    return out


class TestSpool:
    async def test_frames_come_back_in_order_across_segments_which_are_then_deleted(
            self, tmp_path: Path) -> None:
        spool = Spool(tmp_path, 1 << 20, segment_bytes=64)
        spool.open()
        payloads = [f"event-{i:03d}".encode() * 3 for i in range(20)]
        assert spool.append(payloads[:10]) == 10
        await spool.sync()
        assert len(segments(tmp_path)) > 1
        head = await spool.peek(4)
        assert head == payloads[:len(head)]
        spool.advance(len(head))
        assert spool.append(payloads[10:]) == 10
        assert await drain(spool) == payloads[len(head):]
        assert segments(tmp_path) == []
        assert spool.size == 0
        assert not spool.pending
        await spool.aclose()

    async def test_frames_not_yet_advanced_survive_a_restart(self, tmp_path: Path) -> None:
        first = Spool(tmp_path, 1 << 20, segment_bytes=1)
        first.open()
        first.append([b"a" * 30, b"b" * 30, b"c" * 30])
        await first.peek(1)
        first.advance(1)
        await first.aclose()
        second = Spool(tmp_path, 1 << 20)
        second.open()
        assert second.pending
        second.append([b"d"])
        assert await drain(second) == [b"b" * 30, b"c" * 30, b"d"]
        await second.aclose()

    async def test_a_partly_replayed_segment_is_replayed_whole_after_a_restart(
            self, tmp_path: Path) -> None:
        """At least once: a segment is deleted only when all its frames were written."""
        first = Spool(tmp_path, 1 << 20)
        first.open()
        first.append([b"a", b"b"])
        await first.peek(1)
        first.advance(1)
        await first.aclose()
        second = Spool(tmp_path, 1 << 20)
        second.open()
        assert await drain(second) == [b"a", b"b"]
        await second.aclose()

    async def test_appends_beyond_max_bytes_are_refused(self, tmp_path: Path) -> None:
        spool = Spool(tmp_path, 100)
        spool.open()
        assert spool.append([b"x" * 40, b"y" * 40, b"z" * 40]) == 2
        assert spool.size == 96
        await spool.aclose()

    async def test_a_torn_frame_ends_its_segment_and_keeps_the_frames_before(
            self, tmp_path: Path) -> None:
        spool = Spool(tmp_path, 1 << 20)
        spool.open()
        spool.append([b"good-1", b"good-2"])
        await spool.aclose()
        [name] = segments(tmp_path)
        with (tmp_path / "slot-0" / name).open("ab") as handle:
            handle.write(b"\x00\x00\x00\x10\x00\x00")
        reopened = Spool(tmp_path, 1 << 20)
        reopened.open()
        assert await drain(reopened) == [b"good-1", b"good-2"]
        assert segments(tmp_path) == []

    async def test_a_corrupt_payload_is_detected_by_its_checksum(self, tmp_path: Path) -> None:
        spool = Spool(tmp_path, 1 << 20)
        spool.open()
        spool.append([b"first", b"second"])
        await spool.aclose()
        path = tmp_path / "slot-0" / segments(tmp_path)[0]
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
        reopened = Spool(tmp_path, 1 << 20)
        reopened.open()
        assert await drain(reopened) == [b"first"]

    async def test_new_segments_continue_the_sequence_of_old_ones(self, tmp_path: Path) -> None:
        old = Spool(tmp_path, 1 << 20)
        old.open()
        old.append([b"old"])
        await old.aclose()
        new = Spool(tmp_path, 1 << 20)
        new.open()
        new.append([b"new"])
        await new.sync()
        assert segments(tmp_path) == ["seg-000000000001.spool", "seg-000000000002.spool"]
        assert await drain(new) == [b"old", b"new"]
        await new.aclose()

    async def test_live_processes_get_separate_slots_and_a_free_slot_is_taken_over(
            self, tmp_path: Path) -> None:
        first, second = Spool(tmp_path, 1 << 20), Spool(tmp_path, 1 << 20)
        first.open()
        second.open()
        assert (first.directory.name, second.directory.name) == ("slot-0", "slot-1")
        first.append([b"left by the first"])
        second.append([b"left by the second"])
        await first.aclose()
        third = Spool(tmp_path, 1 << 20)
        third.open()
        assert third.directory.name == "slot-0"
        assert await drain(third) == [b"left by the first"]
        await second.aclose()
        await third.aclose()

"""MLLP framing: any chunking yields the same frames; garbage, oversize, restarts."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from connectors.hl7.mllp import (
    HEAD_BYTES,
    Discarded,
    Frame,
    FrameDecoder,
    OversizedFrame,
    frame,
)

payloads = st.binary(min_size=0, max_size=300).map(
    lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b"")
)


def _feed_in_chunks(data: bytes, cuts: list[int], max_size: int = 10_000) -> list[object]:
    decoder = FrameDecoder(max_size)
    events: list[object] = []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, end in itertools.pairwise(points):
        events += decoder.feed(data[start:end])
    return events


@given(st.lists(payloads, min_size=1, max_size=5), st.lists(st.integers(0, 5000), max_size=20))
def test_any_chunking_gives_the_same_frames(messages: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frame(m) for m in messages)
    events = _feed_in_chunks(stream, cuts)
    assert [e for e in events if isinstance(e, Frame)] == [Frame(m) for m in messages]
    assert not [e for e in events if isinstance(e, Discarded)]


def test_bytes_outside_frames_are_discarded_and_counted() -> None:
    events = FrameDecoder(100).feed(b"noise" + frame(b"MSH|1") + b"\r\n")
    assert events == [Discarded(5), Frame(b"MSH|1"), Discarded(2)]


def test_oversized_frame_keeps_only_its_head() -> None:
    big = b"MSH|" + b"x" * 50_000
    events = FrameDecoder(1000).feed(frame(big) + frame(b"MSH|ok"))
    assert isinstance(events[0], OversizedFrame)
    assert events[0].size == len(big) and events[0].head == big[:HEAD_BYTES]
    assert events[1] == Frame(b"MSH|ok")


def test_new_start_block_abandons_an_unfinished_frame() -> None:
    events = FrameDecoder(100).feed(b"\x0bMSH|half" + frame(b"MSH|whole"))
    assert events == [Discarded(8), Frame(b"MSH|whole")]


def test_end_block_without_carriage_return_still_ends_the_frame() -> None:
    decoder = FrameDecoder(100)
    assert decoder.feed(b"\x0bMSH|a\x1c") == []
    assert decoder.feed(b"\x0bMSH|b\x1c\r") == [Frame(b"MSH|a"), Frame(b"MSH|b")]
    assert not decoder.partial

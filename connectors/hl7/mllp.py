"""MLLP framing (HL7 v2.5.1 Appendix C, MLLP release 1): ``<VT> message <FS><CR>``.

:class:`FrameDecoder` is pure: it takes bytes as they arrive (any chunking, partial reads)
and yields complete frames, frames that passed the size limit, and bytes that were
outside any frame. The listener answers a frame with an ACK, an oversized frame with an AR
built from its first bytes, and drops bytes outside frames (MLLP has no way to answer them).
"""

from __future__ import annotations

from dataclasses import dataclass

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"

#: How much of an oversized frame is kept, enough to read its MSH for the AR.
HEAD_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Frame:
    """A complete message, without the framing bytes."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class OversizedFrame:
    """A frame larger than the limit: its first bytes (for the AR) and its full size."""

    head: bytes
    size: int


@dataclass(frozen=True, slots=True)
class Discarded:
    """Bytes outside any frame, or a frame abandoned by a new start block."""

    size: int


FrameEvent = Frame | OversizedFrame | Discarded


def frame(message: bytes) -> bytes:
    """Wrap one message for the wire."""
    return START_BLOCK + message + END_BLOCK + CARRIAGE_RETURN


class FrameDecoder:
    """Incremental MLLP decoder for one connection.

    Args:
        max_size: largest accepted message in bytes; larger frames are reported as
            :class:`OversizedFrame` and their bytes are not kept beyond the head.
    """

    def __init__(self, max_size: int) -> None:
        self._max = max_size
        self._in_frame = False
        self._awaiting_cr = False
        self._buffer = bytearray()
        self._size = 0
        self._garbage = 0

    @property
    def partial(self) -> bool:
        """True while a frame has started and not ended."""
        return self._in_frame

    def feed(self, data: bytes) -> list[FrameEvent]:
        """Consume ``data``; return what completed in it, in order."""
        events: list[FrameEvent] = []
        i, n = 0, len(data)
        while i < n:
            if not self._in_frame:
                start = data.find(START_BLOCK, i)
                if start < 0:
                    self._garbage += n - i
                    break
                self._garbage += start - i
                self._flush_garbage(events)
                self._open()
                i = start + 1
                continue
            if self._awaiting_cr:
                self._awaiting_cr = False
                events.append(self._close())
                if data[i : i + 1] == CARRIAGE_RETURN:
                    i += 1
                continue  # an <FS> without <CR>: the frame ends there all the same
            end = data.find(END_BLOCK, i)
            restart = data.find(START_BLOCK, i)
            if restart >= 0 and (end < 0 or restart < end):
                self._append(data[i:restart])
                events.append(Discarded(self._size))
                self._in_frame = False
                i = restart
                continue
            if end < 0:
                self._append(data[i:])
                break
            self._append(data[i:end])
            self._awaiting_cr = True
            i = end + 1
        self._flush_garbage(events)
        return events

    def _open(self) -> None:
        self._in_frame = True
        self._buffer = bytearray()
        self._size = 0

    def _append(self, chunk: bytes) -> None:
        keep = max(self._max + 1, HEAD_BYTES)
        if len(self._buffer) < keep:
            self._buffer += chunk[: keep - len(self._buffer)]
        self._size += len(chunk)

    def _close(self) -> FrameEvent:
        self._in_frame = False
        if self._size > self._max:
            event: FrameEvent = OversizedFrame(bytes(self._buffer[:HEAD_BYTES]), self._size)
        else:
            event = Frame(bytes(self._buffer))
        self._buffer = bytearray()
        return event

    def _flush_garbage(self, events: list[FrameEvent]) -> None:
        if self._garbage and not self._in_frame:
            events.append(Discarded(self._garbage))
            self._garbage = 0

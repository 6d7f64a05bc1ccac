"""One MLLP frame in, one ACK out: parse, normalize, store, acknowledge. Never raises."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from cds.core.errors import ConflictError
from connectors.hl7.ack import AckCode, build_ack
from connectors.hl7.normalize import SUPPORTED, MessageContentError, normalize
from connectors.hl7.parse import (
    AcceptError,
    MessageHeader,
    UnsupportedMessageError,
    decode,
    parse_segments,
    read_header,
)
from connectors.hl7.store import is_retransmission, store_message

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Hl7Metrics:
    """Prometheus metrics of the MLLP listener, registered on the engine's registry."""

    messages: Counter
    seconds: Histogram

    @classmethod
    def register(cls, registry: CollectorRegistry) -> Hl7Metrics:
        return cls(
            messages=Counter(
                "cdsfusion_mllp_messages_total",
                "HL7v2 messages answered, by message type and ACK code",
                ["message_type", "ack"],
                registry=registry,
            ),
            seconds=Histogram(
                "cdsfusion_mllp_message_seconds",
                "Time from a complete frame to its ACK",
                registry=registry,
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            ),
        )


class MessageHandler:
    """Turns a frame's bytes into the ACK to send back.

    Args:
        session_factory: sessions on the timeline database.
        tz: the site's time zone (HL7 TS without offset).
        issuer_map: configured issuer -> canonical system mapping.
        metrics: where counts and latencies go; ``None`` records nothing.
    """

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        tz: ZoneInfo,
        issuer_map: Mapping[str, str] | None = None,
        metrics: Hl7Metrics | None = None,
    ) -> None:
        self._session_factory = session_factory
        self._tz = tz
        self._issuer_map = issuer_map
        self._metrics = metrics

    def handle(self, raw: bytes, peer: str) -> bytes:
        """The ACK for one message; AA only once it is committed."""
        started = time.perf_counter()
        header: MessageHeader | None = None
        try:
            text = decode(raw)
            header = read_header(text)
            code, error_code, explanation = self._process(raw, text, header, peer)
        except AcceptError as exc:
            code, error_code, explanation = AckCode.REJECT, exc.code, str(exc)
        except Exception as exc:  # noqa: BLE001 - the listener answers AE, never raises
            logger.error("MLLP message failed unexpectedly: %s", type(exc).__name__)
            code, error_code, explanation = AckCode.ERROR, "207", "internal error"
        ack = build_ack(
            code=code, header=header, now=dt.datetime.now(self._tz), error_code=error_code,
            text=explanation,
        )  # fmt: skip
        self._record(header, code, time.perf_counter() - started)
        return ack

    def reject_oversized(self, head: bytes, size: int) -> bytes:
        """AR for a frame over the size limit, naming its MSH-10 when the head has it."""
        header: MessageHeader | None
        try:
            header = read_header(decode(head))
        except AcceptError:
            header = None
        logger.warning("MLLP frame of %d bytes refused: over the size limit", size)
        self._record(header, AckCode.REJECT, 0.0)
        return build_ack(
            code=AckCode.REJECT,
            header=header,
            now=dt.datetime.now(self._tz),
            error_code="100",
            text="message too large",
        )

    def _process(
        self, raw: bytes, text: str, header: MessageHeader, peer: str
    ) -> tuple[AckCode, str | None, str]:
        try:
            segments = parse_segments(text, header)
            hl7 = normalize(
                header=header,
                segments=segments,
                raw=raw,
                sender=peer,
                received_at=dt.datetime.now(dt.UTC),
                tz=self._tz,
            )
        except UnsupportedMessageError as exc:
            return AckCode.REJECT, exc.code, str(exc)
        except MessageContentError as exc:
            return AckCode.ERROR, exc.code, str(exc)
        try:
            stored = store_message(
                session_factory=self._session_factory, hl7=hl7, issuer_map=self._issuer_map
            )
        except ConflictError:
            if is_retransmission(
                session_factory=self._session_factory,
                namespace=header.namespace,
                control_id=header.control_id,
                raw=raw,
            ):
                return AckCode.ACCEPT, None, "duplicate"
            logger.warning("MLLP control id reused for different content")
            return AckCode.REJECT, "205", "message control id already used for other content"
        except SQLAlchemyError as exc:
            logger.error("MLLP message not stored: %s", type(exc).__name__)
            return AckCode.ERROR, "207", "storage unavailable, retry later"
        result = stored.result
        logger.info(
            "MLLP %s stored as %s (%d events%s%s)",
            header.message_type,
            result.source_item_id,
            len(result.event_ids),
            ", duplicate" if result.duplicate else "",
            ", merged" if stored.merged else "",
        )
        return AckCode.ACCEPT, None, "duplicate" if result.duplicate else ""

    def _record(self, header: MessageHeader | None, code: AckCode, seconds: float) -> None:
        if self._metrics is None:
            return
        message_type = "unknown"
        if header is not None:
            supported = header.trigger_event in SUPPORTED.get(header.message_code, ())
            message_type = header.message_type if supported else "other"
        self._metrics.messages.labels(message_type, code.value).inc()
        if seconds:
            self._metrics.seconds.observe(seconds)

"""The MLLP listener (HL7 v2.5.1 Appendix C): persistent connections, many messages each.

One asyncio event loop in a thread owns every socket; each complete frame is handed to a
small thread pool (``CDSFUSION_MLLP_WORKERS``) that parses, stores and builds the ACK, so the
database work never blocks the loop. Messages on one connection are answered strictly in
order (the next frame is processed after the previous ACK was written); connections are
independent. Bytes outside frames are dropped, an oversized frame gets an AR, an idle
connection is closed after ``CDSFUSION_MLLP_IDLE_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from zoneinfo import ZoneInfo

from prometheus_client import Counter, Gauge

from cds.core.runtime import EngineContext
from connectors.hl7.handler import Hl7Metrics, MessageHandler
from connectors.hl7.mllp import Discarded, Frame, FrameDecoder, OversizedFrame, frame
from connectors.identity import issuer_map

logger = logging.getLogger(__name__)

_READ_CHUNK = 65536


class MllpListener:
    """HL7v2 over MLLP as an engine component.

    Args:
        ctx: the process context (settings, sessions, metrics, readiness).
        host: interface to bind. Defaults to ``ctx.settings.bind_host``.
        port: TCP port; 0 picks a free one (see :attr:`port`). Defaults to
            ``ctx.settings.mllp_port``.
    """

    name = "mllp"

    def __init__(self, ctx: EngineContext, *, host: str | None = None, port: int | None = None):
        settings = ctx.settings
        self._host = host or settings.bind_host
        self._requested_port = settings.mllp_port if port is None else port
        self._max_bytes = settings.mllp_max_message_bytes
        self._idle_timeout = settings.mllp_idle_timeout_s
        self._workers = settings.mllp_workers
        self._shutdown_timeout = settings.shutdown_timeout_s
        metrics = Hl7Metrics.register(ctx.metrics)
        self._handler = MessageHandler(
            session_factory=ctx.session_factory,
            tz=ZoneInfo(settings.site_timezone),
            issuer_map=issuer_map(settings),
            metrics=metrics,
        )
        self._connections = Gauge(
            "cdsfusion_mllp_connections", "Open MLLP connections", registry=ctx.metrics
        )
        self._discarded = Counter(
            "cdsfusion_mllp_discarded_bytes_total",
            "Bytes dropped outside MLLP frames or in abandoned frames",
            registry=ctx.metrics,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self.port = 0
        ctx.readiness[self.name] = self.ready

    def ready(self) -> tuple[bool, str]:
        """Readiness: the listening socket is open."""
        if self._server is not None and self._server.is_serving():
            return True, f"listening on port {self.port}"
        return False, "not listening"

    def start(self) -> None:
        """Bind and serve in a background thread; return once listening (raise otherwise)."""
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="mllp-worker")
        self._thread = threading.Thread(target=self._run, name="mllp", daemon=True)
        self._thread.start()
        self._started.wait(30)
        if self._start_error is not None or self._server is None:
            self.stop()
            raise RuntimeError(
                f"MLLP listener could not start on {self._host}:{self._requested_port}"
            ) from self._start_error
        logger.info("MLLP listening on %s:%d", self._host, self.port)

    def stop(self) -> None:
        """Close the listening socket and every connection; wait for in-flight messages."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            thread.join(self._shutdown_timeout + 5)
        self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._open())
        except OSError as exc:
            self._start_error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _open(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self._host, self._requested_port, limit=_READ_CHUNK
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self._shutdown_timeout)
        if self._server is not None:
            await self._server.wait_closed()
        asyncio.get_running_loop().stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._connections.inc()
        peername = writer.get_extra_info("peername")
        peer = str(peername[0]) if peername else ""
        decoder = FrameDecoder(self._max_bytes)
        try:
            while True:
                data = await asyncio.wait_for(reader.read(_READ_CHUNK), self._idle_timeout)
                if not data:
                    break
                for event in decoder.feed(data):
                    await self._answer(event, writer, peer)
        except TimeoutError:
            logger.info("MLLP connection idle for %.0f s: closing", self._idle_timeout)
        except (ConnectionError, asyncio.IncompleteReadError):
            logger.info("MLLP connection lost")
        except asyncio.CancelledError:
            pass
        finally:
            self._connections.dec()
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _answer(
        self,
        event: Frame | OversizedFrame | Discarded,
        writer: asyncio.StreamWriter,
        peer: str,
    ) -> None:
        if isinstance(event, Discarded):
            self._discarded.inc(event.size)
            return
        loop = asyncio.get_running_loop()
        if isinstance(event, OversizedFrame):
            ack = self._handler.reject_oversized(event.head, event.size)
        else:
            ack = await loop.run_in_executor(self._pool, self._handler.handle, event.payload, peer)
        writer.write(frame(ack))
        await writer.drain()

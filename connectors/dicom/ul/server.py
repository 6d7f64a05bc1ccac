"""The acceptor's listening socket and event loop, in a thread of its own.

One asyncio loop serves every association of the process (no thread per association,
no polling); C-STORE requests are handled on the loop (their commit is awaited, not
waited for), and blocking handlers (N-ACTION) run in a thread pool with one worker per
allowed association. Each accepted connection:

1. source address allow-list: refused connections are closed before anything is read
   (the accept loop is ours, so the address is checked before TLS too);
2. ``TCP_NODELAY``: a DIMSE response is small and must not wait for Nagle;
3. TLS, when configured: the handshake (mutual authentication when the context requires
   client certificates) must finish within the handshake timeout;
4. the association itself (:class:`~.association.Association`).

``SO_REUSEPORT`` lets several receiver processes listen on one port. :meth:`stop` stops
listening, aborts idle associations, lets in-flight messages answer first, then stops.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from connectors.dicom.ul.acse import AcceptorConfig
from connectors.dicom.ul.association import Association, ServiceUser
from connectors.dicom.ul.pdu import HEADER_SIZE

logger = logging.getLogger(__name__)

#: Listen backlog of the DICOM port.
BACKLOG = 128


class UpperLayerServer:
    """A DICOM Upper Layer acceptor on one port.

    Args:
        config: AE title, limits, supported syntaxes, timeouts.
        service: the application (allow-lists, handlers, metrics).
        host / port: where to listen (port 0 picks a free one).
        ssl_context: TLS for every connection; ``None`` for plain TCP.
        reuse_port: bind with ``SO_REUSEPORT`` so sibling processes share the port.
        thread_name: the name of the loop's thread.
    """

    def __init__(
        self,
        config: AcceptorConfig,
        service: ServiceUser,
        *,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
        thread_name: str = "dicom-scp",
    ) -> None:
        self.config = config
        self.service = service
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.reuse_port = reuse_port
        self.thread_name = thread_name
        self.executor = ThreadPoolExecutor(
            max_workers=config.max_associations, thread_name_prefix="dicom-dimse"
        )
        self.established = 0
        self.stopping = False
        self.server_address: tuple[str, int] = (host, port)
        #: Every connection's task, with its association once the transport is ready.
        self._connections: dict[asyncio.Task[None], Association | None] = {}
        self._socket: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None

    @property
    def serving(self) -> bool:
        """True while the loop thread runs and accepts connections."""
        return (
            self._thread is not None
            and self._thread.is_alive()
            and self._accepting is not None
            and not self._accepting.done()
        )

    def start(self) -> None:
        """Bind and listen, then serve in the loop's thread; returns once accepting.

        Raises:
            OSError: the port cannot be bound.
        """
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server(
            (self.host, self.port), family=family, backlog=BACKLOG, reuse_port=self.reuse_port
        )
        sock.setblocking(False)
        self._socket = sock
        self.server_address = sock.getsockname()[:2]
        ready: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=self.thread_name, daemon=True
        )
        self._thread.start()
        ready.result()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop listening, let in-flight messages answer (up to ``timeout`` s), then stop."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        done = asyncio.run_coroutine_threadsafe(self._shutdown(timeout), loop)
        try:
            done.result(timeout + 5)
        except (TimeoutError, RuntimeError, OSError) as exc:  # stop anyway
            logger.warning("DICOM server shutdown incomplete (%s)", type(exc).__name__)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _run(self, ready: Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._accepting = loop.create_task(self._accept())
            loop.call_soon(ready.set_result, None)
            loop.run_forever()
        finally:
            loop.close()
            if self._socket is not None:
                self._socket.close()

    async def _accept(self) -> None:
        assert self._socket is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, peer = await loop.sock_accept(self._socket)
            except OSError as exc:  # e.g. out of file descriptors: keep accepting
                logger.warning("DICOM accept failed (%s)", type(exc).__name__)
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self._on_connection(client, str(peer[0])))
            self._connections[task] = None
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._connections.pop(task, None)

    async def _on_connection(self, client: socket.socket, address: str) -> None:
        """Address check, TCP_NODELAY, TLS handshake, then the association."""
        if not self.service.admits_address(address):
            self.service.on_association("refused_address")
            logger.warning("DICOM connection refused: source address not in the allow-list")
            client.close()
            return
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=self.config.max_pdu_size + HEADER_SIZE, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol,
                client,
                ssl=self.ssl_context,
                ssl_handshake_timeout=(
                    self.config.tls_handshake_timeout_s if self.ssl_context else None
                ),
            )
        except (ssl.SSLError, OSError, EOFError) as exc:  # TimeoutError is an OSError
            if self.ssl_context is not None:
                self.service.on_association("tls_failed")
                logger.warning("DICOM TLS handshake failed (%s)", type(exc).__name__)
            client.close()
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        association = Association(self, reader, writer, address)
        task = asyncio.current_task()
        if task is not None:
            self._connections[task] = association
        await association.run()

    async def _shutdown(self, timeout: float) -> None:
        self.stopping = True
        if self._accepting is not None:
            self._accepting.cancel()
        if self._socket is not None:
            self._socket.close()
        for task, association in list(self._connections.items()):
            if association is None:
                task.cancel()  # still in its TLS handshake
            else:
                association.stop()
        if self._connections:
            _, pending = await asyncio.wait(set(self._connections), timeout=timeout)
            for task in pending:
                task.cancel()
        await asyncio.sleep(0)  # let the transports flush their A-ABORTs

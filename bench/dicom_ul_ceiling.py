"""Ceilings for ``bench.dicom_ingest``: the engine's own DICOM upper layer with no engine
behind it.

Runs :class:`connectors.dicom.ul.UpperLayerServer`, the acceptor that ``cdsfusion serve``
uses, in one process with a handler that does one of:

* ``null``: answers success at once; nothing is read, written or indexed. What Python
  spends on the association, PDUs and DIMSE messages alone.
* ``files``: writes File Meta + data set to one file per instance in ``--directory``,
  without fsync and without an index: the work of DCMTK ``storescp -od DIR``, on the same
  upper layer.

Neither is a way to run the engine: nothing is durable, nothing is indexed. They bound
what the durable, indexed path could reach on the machine they run on.

    .venv/bin/python -m bench.dicom_ul_ceiling --mode files --port 11113 --directory /tmp/x
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path
from typing import Any

from cds.core.settings import Settings
from connectors.dicom.receive import file_meta_bytes
from connectors.dicom.scp import VERIFICATION, acceptor_config, storage_sop_classes
from connectors.dicom.ul import UpperLayerServer

AE_TITLE = "CEILING"


class _Nothing:
    def release(self) -> None:
        return None


class CeilingService:
    """A :class:`connectors.dicom.ul.ServiceUser` that admits anyone and stores at most a
    plain file per instance."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.count = 0

    def admits_address(self, address: str) -> bool:
        return True

    def admits_calling_ae(self, ae_title: str) -> bool:
        return True

    def on_association(self, result: str) -> None:
        return None

    def reserve_store(self) -> _Nothing:
        return _Nothing()

    async def on_c_store(
        self,
        *,
        dataset: bytes,
        abstract_syntax: str,
        transfer_syntax: str,
        sop_class: str,
        sop_instance: str,
        calling_ae: str,
        address: str,
        reservation: Any = None,
    ) -> tuple[int, str | None]:
        self.count += 1
        if self.directory is not None:
            meta = file_meta_bytes(
                sop_class=sop_class, sop_instance=sop_instance, transfer_syntax=transfer_syntax
            )
            path = self.directory / f"{self.count:08d}.dcm"
            with path.open("wb") as handle:
                handle.write(meta)
                handle.write(dataset)
        return 0x0000, None

    def on_n_action(self, **_: Any) -> int:
        return 0x0112  # No such SOP Instance: this server keeps nothing to commit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("null", "files"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--directory", type=Path, help="where --mode files writes")
    args = parser.parse_args()
    if args.mode == "files":
        if args.directory is None:
            parser.error("--mode files needs --directory")
        args.directory.mkdir(parents=True, exist_ok=True)
    service = CeilingService(args.directory if args.mode == "files" else None)
    server = make_server(service, port=args.port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    try:
        stop.wait()
    finally:
        server.stop()
    os._exit(0)  # the loop thread is a daemon; nothing else to flush


def make_server(service: CeilingService, *, port: int) -> UpperLayerServer:
    """The engine's upper layer on loopback ``port`` (0: any free one), behind ``service``."""
    defaults = Settings.model_fields
    config = acceptor_config(
        ae_title=AE_TITLE,
        max_pdu_size=defaults["dicom_max_pdu_size"].default,
        max_associations=defaults["dicom_max_associations"].default,
        abstract_syntaxes=storage_sop_classes() | {VERIFICATION},
    )
    return UpperLayerServer(config, service, host="127.0.0.1", port=port)


if __name__ == "__main__":
    main()

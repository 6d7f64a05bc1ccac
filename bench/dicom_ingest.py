"""DICOM ingest throughput: cdsfusion's SCP against DCMTK storescp and Orthanc.

DCMTK ``storescu`` (with ``TCP_NODELAY=1``) sends N small CT instances (about 39 kB, from
pydicom's CT_small.dcm) and M large ones (about 0.5 MB, 512x512x16-bit) over 1 and 4
associations (4 storescu processes) to:

* cdsfusion: ``cdsfusion serve`` on SQLite in a temporary directory; every success means
  the file is fsync'd and the index committed;
* DCMTK ``storescp --fork`` writing files (no fsync, no index);
* Orthanc with its default SQLite index and storage (``TCP_NODELAY=1`` too);
* two ceilings (:mod:`bench.dicom_ul_ceiling`, skipped with ``--no-ceilings``): the
  engine's own upper layer answering success with no storage at all (``ul-null``), and
  writing one plain file per instance with no fsync and no index (``ul-files``, what
  storescp does). They bound what the durable, indexed path can reach on this machine.

All targets run side by side; each cell (size, associations) is sent to every target in
turn, ``--rounds`` times with the order rotating, and the medians are printed: the machine's
drift over minutes (other tenants of a virtual machine, the filesystem's state after a large
deletion) then weighs on every target alike instead of on whichever ran first. Every send
uses fresh SOP Instance UIDs. Prints instances/s for each target and the ratios to cdsfusion, and the CPU time per instance of the receiver (its whole process tree, forked
or spawned children included) and of the storescu senders, read from ``/proc``: where the
senders and the receiver share the machine's cores, the sum bounds the rate. Figures only:
nothing is asserted.

    .venv/bin/python bench/dicom_ingest.py --small 400 --large 100 --processes 1

``--postgres [URL]`` indexes into a fresh database on that PostgreSQL server instead of
SQLite (created and dropped by the run), where ``--processes`` > 1 receiver processes
write in parallel rather than taking turns.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bench.dicom_ul_ceiling import AE_TITLE as CEILING_AE_TITLE
from bench.pg import DEFAULT_SERVER, create_database, drop_database

CLI = str(Path(sys.executable).with_name("cdsfusion"))


def peer_tool(tool: str) -> str:
    """The DCMTK (or Orthanc) executable, not pynetdicom's app of the same name that the
    venv's bin/ puts first on PATH once activated."""
    venv_bin = str(Path(sys.prefix) / "bin")
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if p.rstrip("/") != venv_bin
    )
    found = shutil.which(tool, path=path)
    if found is None:
        sys.exit(f"{tool} not found: apt-get install -y dcmtk orthanc")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_instances(directory: Path, count: int, *, large: bool) -> list[Path]:
    template = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    if large:
        rng = np.random.default_rng(7)
        template.Rows = template.Columns = 512
        template.PixelData = rng.integers(0, 4096, (512, 512), dtype=np.uint16).tobytes()
        template.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    study, series = generate_uid(), generate_uid()
    directory.mkdir(parents=True)
    paths = []
    for n in range(count):
        template.StudyInstanceUID, template.SeriesInstanceUID = study, series
        template.SOPInstanceUID = generate_uid()
        template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
        template.InstanceNumber = n + 1
        path = directory / f"{n:05d}.dcm"
        template.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def send(port: int, aet: str, paths: list[Path], associations: int) -> float:
    """Seconds to send ``paths`` over ``associations`` parallel storescu processes."""
    env = dict(os.environ, TCP_NODELAY="1")
    chunks = [paths[i::associations] for i in range(associations)]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                peer_tool("storescu"),
                "-aet",
                "BENCH",
                "-aec",
                aet,
                "127.0.0.1",
                str(port),
                *map(str, chunk),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for chunk in chunks
    ]
    failures = 0
    for proc in procs:
        _, err = proc.communicate()
        failures += proc.returncode != 0
        if proc.returncode:
            print(err.decode(errors="replace")[-500:], file=sys.stderr)
    elapsed = time.perf_counter() - started
    if failures:
        print(f"  warning: {failures} storescu processes failed", file=sys.stderr)
    return elapsed


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants (reaped children included), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:  # gone, or no /proc: counts nothing
        return 0.0
    own = sum(int(f) for f in fields[11:15]) / _TICK  # utime, stime, cutime, cstime
    return own + sum(tree_cpu_s(int(child)) for child in children)


def sender_cpu_s() -> float:
    """CPU seconds of this process's reaped children (the storescu senders)."""
    times = os.times()
    return times.children_user + times.children_system


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"port {port} not listening")


@contextmanager
def fresh_postgres(server: str) -> Iterator[str]:
    """The URL of a new, empty database on ``server``, dropped afterwards."""
    name, url = create_database(server, "cdsfusion_bench_dicom")
    try:
        yield url
    finally:
        drop_database(server, name)


@contextmanager
def cdsfusion(
    work: Path, processes: int, database_url: str | None = None
) -> Iterator[tuple[int, str, int]]:
    port, http = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDSFUSION_")}
    env.update(
        CDSFUSION_DATA_DIR=str(work / "var"),
        CDSFUSION_DATABASE_URL=database_url or f"sqlite:///{work / 'var' / 'cdsfusion.db'}",
        CDSFUSION_HTTP_PORT=str(http),
        CDSFUSION_DICOM_PORT=str(port),
        CDSFUSION_MLLP_PORT="0",
        CDSFUSION_LOG_LEVEL="WARNING",
        CDSFUSION_DICOM_QUIET_PERIOD_S="600",
        CDSFUSION_DICOM_RECEIVER_PROCESSES=str(processes),
        CDSFUSION_BROKER_URL=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/15"),
    )
    log = (work / "serve.log").open("wb")
    proc = subprocess.Popen([CLI, "serve"], env=env, cwd=work, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                ready = httpx.get(f"http://127.0.0.1:{http}/readyz", timeout=1)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"cdsfusion serve did not start; see {work / 'serve.log'}")
            time.sleep(0.3)
        time.sleep(1.0 if processes > 1 else 0)  # let the receiver processes bind
        yield port, "CDSFUSION", proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


@contextmanager
def storescp(work: Path) -> Iterator[tuple[int, str, int]]:
    port = free_port()
    out = work / "storescp"
    out.mkdir()
    proc = subprocess.Popen(
        [peer_tool("storescp"), "--fork", "-od", str(out), str(port)],
        env=dict(os.environ, TCP_NODELAY="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield port, "ANY-SCP", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def ceiling(work: Path, mode: str) -> Iterator[tuple[int, str, int]]:
    port = free_port()
    command = [sys.executable, "-m", "bench.dicom_ul_ceiling", "--mode", mode, "--port", str(port)]
    if mode == "files":
        command += ["--directory", str(work / "files")]
    proc = subprocess.Popen(
        command, cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.DEVNULL
    )
    try:
        wait_port(port)
        yield port, CEILING_AE_TITLE, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def orthanc(work: Path) -> Iterator[tuple[int, str, int]]:
    port, http = free_port(), free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(work / "orthanc" / "storage"),
        "IndexDirectory": str(work / "orthanc" / "index"),
        "HttpPort": http,
        "DicomPort": port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "Plugins": [],
    }
    path = work / "orthanc.json"
    path.write_text(json.dumps(config))
    proc = subprocess.Popen(
        ["Orthanc", str(path)],
        env=dict(os.environ, TCP_NODELAY="1"),  # DCMTK inside Orthanc reads it too
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield port, "ORTHANC", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=400, help="N small (39 kB) instances")
    parser.add_argument("--large", type=int, default=100, help="M large (0.5 MB) instances")
    parser.add_argument("--processes", type=int, default=1, help="cdsfusion receiver processes")
    parser.add_argument("--associations", type=int, nargs="+", default=[1, 4])
    parser.add_argument(
        "--postgres",
        metavar="URL",
        nargs="?",
        const=DEFAULT_SERVER,
        help="index into a fresh database on this PostgreSQL server instead of SQLite"
        f" (default server: {DEFAULT_SERVER})",
    )
    parser.add_argument(
        "--no-ceilings", action="store_true", help="skip the ul-null and ul-files ceilings"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="send each cell this many times to every target, in rotating order; medians",
    )
    args = parser.parse_args()
    for tool in ("storescu", "storescp", "Orthanc"):
        peer_tool(tool)  # exits when missing
    targets: tuple[str, ...] = ("cdsfusion", "storescp", "orthanc")
    if not args.no_ceilings:
        targets += ("ul-null", "ul-files")
    rates: dict[tuple[str, str, int], list[float]] = {}
    cpus: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="dicom-bench-"))
        database_url = stack.enter_context(fresh_postgres(args.postgres)) if args.postgres else None
        root = Path(tmp)
        running: dict[str, tuple[int, str, int]] = {}
        for name in targets:
            work = root / name
            work.mkdir()
            if name == "cdsfusion":
                context = cdsfusion(work, args.processes, database_url)
            elif name == "storescp":
                context = storescp(work)
            elif name == "orthanc":
                context = orthanc(work)
            else:
                context = ceiling(work, name.removeprefix("ul-"))
            running[name] = stack.enter_context(context)
        # Every target runs all along and each cell goes to all of them in turn, the order
        # rotating from round to round: the machine's drift over minutes (other tenants,
        # the filesystem's state) then weighs on every target alike.
        for size, count in (("39kB", args.small), ("0.5MB", args.large)):
            for assocs in args.associations:
                for round_ in range(args.rounds):
                    shift = round_ % len(targets)
                    for name in targets[shift:] + targets[:shift]:
                        port, aet, pid = running[name]
                        files = make_instances(
                            root / "data" / f"{name}-{size}-{assocs}-{round_}",
                            count,
                            large=size != "39kB",
                        )
                        receiver, sender = tree_cpu_s(pid), sender_cpu_s()
                        seconds = send(port, aet, files, assocs)
                        rates.setdefault((name, size, assocs), []).append(count / seconds)
                        cpus.setdefault((name, size, assocs), []).append(
                            (
                                1000 * (tree_cpu_s(pid) - receiver) / count,
                                1000 * (sender_cpu_s() - sender) / count,
                            )
                        )
                        print(
                            f"{name:10s} {size:6s} {assocs} assoc round {round_ + 1}:"
                            f" {count / seconds:8.1f} inst/s",
                            flush=True,
                        )
    results = {key: statistics.median(values) for key, values in rates.items()}
    cpu = {
        key: (statistics.median(rx for rx, _ in values), statistics.median(tx for _, tx in values))
        for key, values in cpus.items()
    }
    print()
    store = "PostgreSQL" if args.postgres else "SQLite"
    print(
        f"cdsfusion receiver processes: {args.processes} ({store}); CPUs: {os.cpu_count()};"
        f" medians of {args.rounds} rounds"
    )
    print(
        f"{'size':6s} {'assoc':>5s} "
        + " ".join(f"{t:>10s}" for t in targets)
        + f" {'cds/scp':>8s} {'cds/orthanc':>11s}"
        + ("" if args.no_ceilings else f" {'null/scp':>8s} {'files/scp':>9s}")
    )
    for size in ("39kB", "0.5MB"):
        for assocs in args.associations:
            rate = {t: results[(t, size, assocs)] for t in targets}
            scp = rate["storescp"]
            line = (
                f"{size:6s} {assocs:5d} "
                + " ".join(f"{rate[t]:10.1f}" for t in targets)
                + f" {rate['cdsfusion'] / scp:8.2f} {rate['cdsfusion'] / rate['orthanc']:11.2f}"
            )
            if not args.no_ceilings:
                line += f" {rate['ul-null'] / scp:8.2f} {rate['ul-files'] / scp:9.2f}"
            print(line)
    print()
    print("CPU ms per instance, receiver (process tree) + storescu senders:")
    print(f"{'size':6s} {'assoc':>5s} " + " ".join(f"{t:>17s}" for t in targets))
    for size in ("39kB", "0.5MB"):
        for assocs in args.associations:
            cells = (cpu[(t, size, assocs)] for t in targets)
            print(
                f"{size:6s} {assocs:5d} "
                + " ".join(f"{f'{rx:.2f} + {tx:.2f}':>17s}" for rx, tx in cells)
            )


if __name__ == "__main__":
    main()

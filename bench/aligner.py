"""Bundle assembly cost at 100k and 1M timeline events on PostgreSQL, in one run.

Loads a synthetic timeline (patients with labs, vitals, notes, demographics and chest
studies over 90 days, about 200 events per patient) with COPY, then assembles bundles of the demo task for random
anchors: the aligner's indexed queries plus the pure alignment (``load_events`` + ``align``),
and the whole ``assemble_bundle`` with its writes (rolled back). It prints p50/p95 at 100k
events, grows the same database to 1M, measures again, and prints the ratio.

Goal (issue 5): p95 <= 10 ms at 1M events, and at most 1.5x the 100k figure.

Usage: python -m bench.aligner [--events-small 100000] [--events-large 1000000]
       (PostgreSQL from CDSFUSION_BENCH_POSTGRES_URL, default the machine's test server)
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import time
import uuid

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from bench.pg import DEFAULT_SERVER, create_database, drop_database
from cds.core import migrate
from cds.core.aligner.align import align
from cds.core.aligner.task import load_tasks
from cds.core.db.models import TimelineEvent
from cds.core.db.session import make_engine
from cds.core.pipeline.bundles import anchor_of, assemble_bundle
from cds.core.pipeline.timeline import load_events

LABS = ["6690-2", "1988-5", "2524-7", "2160-0", "718-7", "2951-2"]
VITALS = ["8867-4", "9279-1", "8310-5", "59408-5", "8480-6"]
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SPAN_S = 90 * 86400


def load(
    engine: object, patients: list[uuid.UUID], n_events: int, rng: random.Random
) -> list[uuid.UUID]:
    """COPY ``n_events`` events spread over ``patients``; returns the anchor event ids."""
    raw = engine.raw_connection()  # type: ignore[attr-defined]
    anchors: list[uuid.UUID] = []
    now = dt.datetime.now(dt.UTC)
    try:
        cur = raw.cursor()
        items = []
        with cur.copy(
            "COPY source_items (id, protocol, namespace, item_id, item_version, sender, "
            "content_type, content_sha256, size_bytes, received_at, patient_id) FROM STDIN"
        ) as copy:
            for p in patients:
                item = uuid.uuid4()
                items.append(item)
                copy.write_row((item, "hl7v2", "BENCH", str(item), "", "", "", "0" * 64, 0, now, p))
        with cur.copy(
            "COPY timeline_events (id, patient_id, source_item_id, event_key, lineage_key, kind, "
            "status, effective_at, category, code_system, code, value_num, unit, details, "
            "created_at) FROM STDIN"
        ) as copy:
            for n in range(n_events):
                k = rng.randrange(len(patients))
                at = START + dt.timedelta(seconds=rng.randrange(SPAN_S))
                eid = uuid.uuid4()
                roll = rng.random()
                if roll < 0.55:
                    row = ("observation", "laboratory", "http://loinc.org", rng.choice(LABS), 1.0)
                elif roll < 0.93:
                    row = (
                        "observation",
                        "vital-signs",
                        "http://loinc.org",
                        rng.choice(VITALS),
                        80.0,
                    )
                elif roll < 0.98:
                    row = ("note", None, "http://loinc.org", "11506-3", None)
                elif roll < 0.995:
                    row = ("demographics", None, None, None, None)
                else:
                    row = (
                        "imaging-study",
                        None,
                        "http://dicom.nema.org/resources/ontology/DCM",
                        "DX",
                        None,
                    )
                kind, category, system, code, value = row
                details = (
                    '{"modalities": ["DX"], "body_parts": ["CHEST"]}'
                    if kind == "imaging-study"
                    else None
                )
                copy.write_row(
                    (
                        eid,
                        patients[k],
                        items[k],
                        str(n),
                        f"bench|{eid}",
                        kind,
                        "current",
                        at,
                        category,
                        system,
                        code,
                        value,
                        None,
                        details,
                        now,
                    )
                )
                if kind == "imaging-study":
                    anchors.append(eid)
        raw.commit()
    finally:
        raw.close()
    return anchors


def measure(
    engine: object, anchors: list[uuid.UUID], samples: int, rng: random.Random
) -> dict[str, float]:
    task = load_tasks()["cxr-deterioration"]
    picks = [rng.choice(anchors) for _ in range(samples)]
    query_ms, full_ms, members = [], [], []
    with Session(engine) as session:  # type: ignore[arg-type]
        for event_id in picks[: samples // 5]:  # warm the caches
            row = session.get(TimelineEvent, event_id)
            assert row is not None and row.patient_id is not None
            load_events(
                session=session, task=task, patient_id=row.patient_id, anchor_at=row.effective_at
            )
        for event_id in picks:
            row = session.get(TimelineEvent, event_id)
            assert row is not None and row.patient_id is not None
            started = time.perf_counter()
            events = load_events(
                session=session, task=task, patient_id=row.patient_id, anchor_at=row.effective_at
            )
            bundle = align(task, anchor_of(row), events)
            query_ms.append((time.perf_counter() - started) * 1e3)
            members.append(len(bundle.members))
            session.rollback()
            started = time.perf_counter()
            session.begin()
            try:
                assemble_bundle(session=session, task=task, anchor_event_id=event_id)
                full_ms.append((time.perf_counter() - started) * 1e3)
            finally:
                session.rollback()
    q = statistics.quantiles(query_ms, n=100, method="inclusive")
    f = statistics.quantiles(full_ms, n=100, method="inclusive")
    return {
        "query_p50": q[49],
        "query_p95": q[94],
        "full_p50": f[49],
        "full_p95": f[94],
        "members": statistics.mean(members),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events-small", type=int, default=100_000)
    parser.add_argument("--events-large", type=int, default=1_000_000)
    parser.add_argument("--patients", type=int, default=5_000)
    parser.add_argument("--samples", type=int, default=400)
    args = parser.parse_args()
    server = DEFAULT_SERVER
    name, url = create_database(server, "cdsfusion_bench")
    rng = random.Random(7)
    try:
        migrate.upgrade(url)
        engine = make_engine(url)
        with engine.begin() as conn:
            patients = [uuid.uuid4() for _ in range(args.patients)]
            conn.execute(
                text("INSERT INTO patients (id, created_at) VALUES (:id, now())"),
                [{"id": p} for p in patients],
            )
        results = {}
        anchors: list[uuid.UUID] = []
        loaded = 0
        # The table grows by patients at a constant density per patient, as a hospital's
        # does: the small phase fills a share of the patients, the large phase the rest.
        split = round(args.patients * args.events_small / args.events_large)
        cohorts = {args.events_small: patients[:split], args.events_large: patients[split:]}
        for target in (args.events_small, args.events_large):
            started = time.perf_counter()
            anchors += load(engine, cohorts[target], target - loaded, rng)
            loaded = target
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("ANALYZE"))
            print(
                f"loaded {loaded:,} events in {time.perf_counter() - started:.0f} s "
                f"({len(anchors):,} chest studies)"
            )
            results[target] = measure(engine, anchors, args.samples, rng)
            r = results[target]
            print(
                f"  {loaded:>9,} events: load+align p50 {r['query_p50']:.2f} ms, "
                f"p95 {r['query_p95']:.2f} ms; assemble with writes p50 {r['full_p50']:.2f} ms, "
                f"p95 {r['full_p95']:.2f} ms; {r['members']:.0f} members/bundle"
            )
        with Session(engine) as session:
            row = session.scalar(
                select(TimelineEvent).where(TimelineEvent.kind == "imaging-study").limit(1)
            )
            assert row is not None
            task = load_tasks()["cxr-deterioration"]
            from cds.core.pipeline.timeline import modality_query

            query = modality_query(
                task.modalities["labs"], patient_id=row.patient_id, anchor_at=row.effective_at
            )
            sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
            plan = session.execute(text("EXPLAIN " + sql)).scalars().all()
        print("plan (labs modality):", " | ".join(p.strip() for p in plan[:3]))
        small, large = results[args.events_small], results[args.events_large]
        print(
            f"ratio {args.events_large:,}/{args.events_small:,} events: load+align p95 "
            f"{large['query_p95'] / small['query_p95']:.2f}x, assemble p95 "
            f"{large['full_p95'] / small['full_p95']:.2f}x (goal <= 1.5x; p95 goal <= 10 ms)"
        )
        engine.dispose()
    finally:
        drop_database(server, name)


if __name__ == "__main__":
    main()

"""Lean statements give what SQLAlchemy's own execution gives (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from cds.core.db.lean import LeanStatement, in_list, in_pairs, numbered, numbered_pairs
from cds.core.db.models import ImagingStudy, Protocol, SourceItem, StudyState
from cds.core.db.upsert import insert_ignoring_conflicts

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC)
STUDIES = ImagingStudy.__table__
ITEMS = SourceItem.__table__


def study_row(uid: str, *, state: StudyState, completed: bool) -> dict[str, object]:
    return {
        "id": uuid.uuid4(),
        "study_instance_uid": uid,
        "state": state,
        "version": 2,
        "first_received_at": T0,
        "last_received_at": T0 + dt.timedelta(seconds=5),
        "completed_at": T0 + dt.timedelta(minutes=1) if completed else None,
    }


def compile_for(session: Session, statement: object) -> LeanStatement:
    return LeanStatement.compile(statement, session.connection().dialect)  # type: ignore[arg-type]


def test_rows_are_what_sqlalchemy_returns(session: Session) -> None:
    rows = [
        study_row("1.2.3.1", state=StudyState.COMPLETE, completed=True),
        study_row("1.2.3.2", state=StudyState.RECEIVING, completed=False),
    ]
    session.execute(STUDIES.insert(), rows)
    columns = (
        STUDIES.c.id,
        STUDIES.c.study_instance_uid,
        STUDIES.c.state,
        STUDIES.c.last_received_at,
        STUDIES.c.completed_at,
    )
    uids = ["1.2.3.2", "1.2.3.1", "1.2.3.9"]
    lean = compile_for(
        session,
        select(*columns)
        .where(in_list(STUDIES.c.study_instance_uid, "u", len(uids)))
        .order_by(STUDIES.c.study_instance_uid),
    )
    expected = session.execute(
        select(*columns)
        .where(STUDIES.c.study_instance_uid.in_(uids))
        .order_by(STUDIES.c.study_instance_uid)
    ).all()
    got = lean.execute(session.connection(), numbered("u", uids))
    assert got == [tuple(row) for row in expected]
    assert len(got) == 2
    # The dialect's types came back: uuid, enum and an aware UTC datetime, not strings.
    assert isinstance(got[0][0], uuid.UUID)
    assert got[0][2] is StudyState.COMPLETE
    assert got[0][3] == T0 + dt.timedelta(seconds=5)
    assert got[0][3].tzinfo is not None
    assert got[1][4] is None


def test_pairs_and_literals_bound_by_the_statement(session: Session) -> None:
    rows = [
        study_row("1.2.4.1", state=StudyState.RECEIVING, completed=False),
        study_row("1.2.4.2", state=StudyState.RECEIVING, completed=False),
    ]
    session.execute(STUDIES.insert(), rows)
    lean = compile_for(
        session,
        select(STUDIES.c.study_instance_uid).where(
            in_pairs(STUDIES.c.id, STUDIES.c.version, 2),
            STUDIES.c.state == StudyState.RECEIVING,  # a literal the statement carries
        ),
    )
    pairs = [(rows[0]["id"], 2), (rows[1]["id"], 1)]
    got = lean.execute(session.connection(), numbered_pairs(pairs))  # type: ignore[arg-type]
    assert got == [("1.2.4.1",)]


def test_multi_row_insert_returning_skips_conflicts_and_converts_values(
    session: Session,
) -> None:
    def item(uid: str) -> dict[str, object]:
        return {
            "id": uuid.uuid4(),
            "protocol": Protocol.DICOM,
            "namespace": "",
            "item_id": uid,
            "item_version": "",
            "sender": "MOD@127.0.0.1",
            "content_type": "application/dicom",
            "content_sha256": uid.ljust(64, "0"),
            "size_bytes": 10,
            "storage_key": f"k/{uid}",
            "received_at": T0,
        }

    first = item("9.1")
    session.execute(insert_ignoring_conflicts(session, SourceItem), [first])
    rows = [item("9.1"), item("9.2")]
    columns = tuple(rows[0])
    lean = compile_for(
        session,
        insert_ignoring_conflicts(session, SourceItem)
        .values(
            [
                {c: bindparam(f"r{i}_{c}", type_=ITEMS.c[c].type) for c in columns}
                for i in range(len(rows))
            ]
        )
        .returning(ITEMS.c.item_id, ITEMS.c.id),
    )
    params = {f"r{i}_{c}": row[c] for i, row in enumerate(rows) for c in columns}
    got = lean.execute(session.connection(), params)
    assert got == [("9.2", rows[1]["id"])]
    stored = session.execute(
        select(SourceItem.item_id, SourceItem.protocol, SourceItem.received_at).order_by(
            SourceItem.item_id
        )
    ).all()
    assert [tuple(r) for r in stored] == [("9.1", Protocol.DICOM, T0), ("9.2", Protocol.DICOM, T0)]


def test_runs_in_the_sessions_transaction_and_its_savepoints(session: Session) -> None:
    lean = compile_for(
        session,
        STUDIES.insert().values(
            {c.key: bindparam(c.key, type_=c.type) for c in STUDIES.c if c.key != "completes_at"}
        ),
    )
    keep = study_row("1.2.5.1", state=StudyState.RECEIVING, completed=False)
    undone = study_row("1.2.5.2", state=StudyState.RECEIVING, completed=False)
    for row in (keep, undone):
        row.update(patient_id=None, accession_number=None, study_datetime=None)
        row.update(study_description=None)
    lean.execute_many(session.connection(), [keep])
    with pytest.raises(RuntimeError), session.begin_nested():
        lean.execute_many(session.connection(), [undone])
        raise RuntimeError("roll the savepoint back")
    uids = session.scalars(select(ImagingStudy.StudyInstanceUID)).all()
    assert uids == ["1.2.5.1"]


def test_refuses_what_it_cannot_run_as_compiled(session: Session) -> None:
    dialect = session.connection().dialect
    with pytest.raises(ValueError, match="expanding"):
        LeanStatement.compile(
            select(STUDIES.c.id).where(STUDIES.c.study_instance_uid.in_(["a", "b"])), dialect
        )
    # A multi-row insert that leaves out a column with a per-execution default (the id).
    with pytest.raises(ValueError, match=r"computed per execution \(id, "):
        LeanStatement.compile(
            STUDIES.insert().values([{"study_instance_uid": bindparam(f"u{i}")} for i in range(2)]),
            dialect,
        )
    returning = LeanStatement.compile(select(STUDIES.c.id), dialect)
    with pytest.raises(ValueError, match="return no rows"):
        returning.execute_many(session.connection(), [{}])

"""Audit controls: a tampered row is caught by `cdsfusion audit verify` and the trail page;
`cdsfusion users create-admin` makes the first admin (no default password)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text

from cds.core.cli.audit import audit
from cds.core.cli.users import users
from cds.core.db.models import AuditEntry, ReviewRole, ReviewUser
from tests.review.conftest import Live
from tests.review.helpers import csrf, sign_in

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_tampered_review_entry_is_detected(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    with live.client() as client:
        sign_in(client, "clin")
        client.get(f"/audit/predictions/{live.seeded.current}")
    monkeypatch.setenv("CDSFUSION_DATABASE_URL", live.ctx.settings.database_url)
    runner = CliRunner()
    assert runner.invoke(audit, ["verify"]).exit_code == 0

    with live.ctx.session_factory() as session:
        target = session.scalar(select(AuditEntry.id).where(AuditEntry.action == "review.view"))
    assert target is not None
    # Tamper the way an attacker with database rights would: around the trigger.
    with live.ctx.engine.begin() as conn:
        conn.execute(text("DROP TRIGGER audit_log_no_update"))
        conn.execute(
            text("UPDATE audit_log SET actor = 'user:someone-else' WHERE id = :i"), {"i": target}
        )

    result = runner.invoke(audit, ["verify"])
    assert result.exit_code == 1
    assert f"BROKEN at entry {target}" in result.output

    with live.client() as client:
        sign_in(client, "audi")
        token = csrf(client, "/audit/trail")
        page = client.post("/audit/trail/verify", data={"csrf": token})
    assert page.status_code == 200
    assert f"BROKEN at entry {target}" in page.text


def test_create_admin_from_the_cli(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDSFUSION_DATABASE_URL", live.ctx.settings.database_url)
    runner = CliRunner()
    weak = runner.invoke(users, ["create-admin", "root", "--password-stdin"], input="short\n")
    assert weak.exit_code != 0 and "12 characters" in weak.output
    made = runner.invoke(
        users, ["create-admin", "root", "--password-stdin"], input="a long enough secret\n"
    )
    assert made.exit_code == 0, made.output
    taken = runner.invoke(
        users, ["create-admin", "ROOT", "--password-stdin"], input="a long enough secret\n"
    )
    assert taken.exit_code != 0
    with live.ctx.session_factory() as session:
        user = session.scalars(select(ReviewUser).where(ReviewUser.username == "root")).one()
        assert user.role is ReviewRole.ADMIN
        assert user.password_hash and "a long enough secret" not in user.password_hash
        assert (
            session.scalar(
                select(AuditEntry.actor).where(
                    AuditEntry.action == "review.user-create", AuditEntry.entity_id == str(user.id)
                )
            )
            == "system:cli"
        )
    with live.client() as client:
        response = sign_in(client, "root", "a long enough secret")
        assert response.headers["location"] == "/audit/admin/users"

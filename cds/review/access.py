"""Who may do what on the review pages (minimum necessary, 45 CFR 164.502(b)).

========= =============================== ======= =========== =====
role      predictions (list, page, image) verdict audit trail users
========= =============================== ======= =========== =====
clinician yes                             yes     no          no
auditor   yes                             no      yes         no
admin     no                              no      yes         yes
========= =============================== ======= =========== =====

Anything else answers 403 and is written to the audit log (``review.forbidden``).
"""

from __future__ import annotations

import enum

from cds.core.db.models import ReviewRole


class Permission(enum.StrEnum):
    """One thing a page needs."""

    VIEW_PREDICTIONS = "view-predictions"
    GIVE_VERDICT = "give-verdict"
    AUDIT_TRAIL = "audit-trail"
    MANAGE_USERS = "manage-users"


GRANTS: dict[ReviewRole, frozenset[Permission]] = {
    ReviewRole.CLINICIAN: frozenset({Permission.VIEW_PREDICTIONS, Permission.GIVE_VERDICT}),
    ReviewRole.AUDITOR: frozenset({Permission.VIEW_PREDICTIONS, Permission.AUDIT_TRAIL}),
    ReviewRole.ADMIN: frozenset({Permission.AUDIT_TRAIL, Permission.MANAGE_USERS}),
}


def allowed(role: ReviewRole, permission: Permission) -> bool:
    return permission in GRANTS.get(role, frozenset())


def home(role: ReviewRole) -> str:
    """Where a user lands after signing in."""
    return "/audit/admin/users" if role is ReviewRole.ADMIN else "/audit/predictions"

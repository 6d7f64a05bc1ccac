"""Repository functions: keyword-only arguments and an explicit session, no commits.

The caller owns the transaction (see :func:`cds.core.db.session.transaction`), so a
connector can store an item, its events and its outbox rows atomically and acknowledge
only after the commit.
"""

"""The scoring pipeline, with the database as the source of truth.

anchor event -> bundle (versioned) -> scoring job -> prediction, each a row with a state.
Work moves between steps through the transactional outbox (``relay.py``): a step's effect
and the message announcing it are committed together, so a crash loses nothing and a
repeated message changes nothing.

* ``timeline.py``  the aligner's indexed queries (patient, kind, time range)
* ``anchors.py``   which tasks an event anchors (pure)
* ``bundles.py``   assemble and persist bundle versions; late data
* ``jobs.py``      the scoring-job state machine: claim, finish, fail, dead-letter, sweep
* ``handlers.py``  outbox topic handlers
* ``relay.py``     the outbox relay component (embedded and distributed)
"""

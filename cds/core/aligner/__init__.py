"""The temporal aligner: task definitions and the pure function that builds bundles.

``task.py`` reads and validates prediction-task definitions (YAML, one file per task);
``align.py`` turns (task, anchor, timeline events) into a bundle, with no I/O at all. The
database side lives in :mod:`cds.core.pipeline`.
"""

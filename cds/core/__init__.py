"""The core of the engine: settings, the patient-timeline schema and its repository, the CLI.

Nothing here imports torch; the model lives in :mod:`fusion` and is loaded only by workers.
"""

"""The Celery application: configured from settings in the entry point, never at import.

Jobs carry only a job id; the database holds the job's state. Messages are acknowledged
after the task finishes (``acks_late``) and given back to the broker when a worker dies
mid-task (``reject_on_worker_lost``), so a kill -9 loses nothing; the job's lease and the
relay's sweep cover a broker that lost the message.
"""

from __future__ import annotations

from celery import Celery

SCORING_QUEUE = "scoring"
SCORE_TASK = "cdsfusion.score_job"


def make_celery(broker_url: str) -> Celery:
    """A Celery app on ``broker_url`` (``redis://`` or ``amqp://``)."""
    app = Celery("cdsfusion", broker=broker_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        task_default_queue=SCORING_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        # Redis: redeliver an unacknowledged message after this long (a lost worker).
        broker_transport_options={"visibility_timeout": 600},
    )
    return app

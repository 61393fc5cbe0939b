"""The job runner (after NetBox): the row is the truth, RQ only carries its id.

    job = jobs.enqueue("sync_resource", {"resource_id": 3}, user=current_user)

commits a pending Job row, then puts `worker.jobs.sync_resource(job_id)` on the
"ferry" queue with the JSON serializer. Every entry point in worker.jobs is
wrapped by `run`: pending -> running -> finished, a FerryError -> failed with
its message, anything else -> errored with the traceback kept on the row.
"""
import logging
import traceback as tb

from flask import current_app

from app import status
from app.errors import FerryError
from app.extensions import db
from app.models import Job, utcnow

log = logging.getLogger("ferry.jobs")

QUEUE_DEFAULT = "ferry"
QUEUE_MIGRATIONS = "ferry-migrations"


def redis_connection(app=None):
    """A Redis client for the configured URL (Redis carries only the RQ queues)."""
    # redis and rq are imported here, not at the top: a CLI command or page that queues
    # nothing should not pay a fifth of a second for them.
    from redis import Redis
    app = app or current_app
    return Redis.from_url(app.config["REDIS_URL"])


def get_queue(name=QUEUE_DEFAULT, connection=None):
    """An RQ queue that speaks JSON, never pickle."""
    from rq import Queue
    from rq.serializers import JSONSerializer
    return Queue(name, connection=connection or redis_connection(), serializer=JSONSerializer)


def enqueue(name, args=None, *, user=None, queue=QUEUE_DEFAULT, timeout=None, connection=None,
            module="worker.jobs"):
    """Create the Job row, commit it, then enqueue `<module>.<name>(job_id)`; returns the row."""
    return send(create(name, args, user_id=getattr(user, "id", None)), queue=queue,
                timeout=timeout, connection=connection, module=module)


def create(name, args=None, *, user_id=None):
    """Commit a pending Job row (the worker must find it before RQ hands it the id)."""
    job = Job(name=name, args=args or {}, status=status.JOB_PENDING, user_id=user_id)
    db.session.add(job)
    db.session.commit()
    return job


def send(job, *, queue=QUEUE_DEFAULT, timeout=None, connection=None, module="worker.jobs"):
    """Put a committed Job row's id on an RQ queue (never retried by RQ); returns the row."""
    rq_job = get_queue(queue, connection).enqueue(
        f"{module}.{job.name}", job.id,
        job_id=f"ferry-job-{job.id}",
        job_timeout=timeout or current_app.config["JOB_TIMEOUT"],
        result_ttl=3600, failure_ttl=86400,
        description=f"{job.name} {job.args or {}}",
    )
    job.rq_id = rq_job.id
    db.session.commit()
    return job


def queued(job, connection=None):
    """True while the RQ job of a pending row waits in Redis (False when Redis lost it).

    "queued" is believed only while the job's id is on its queue: RQ takes a job by moving its
    id to the queue's intermediate list and marks it started a moment later, so a worker killed
    in between leaves a job that says "queued" and that no worker will take (RQ's maintenance
    fails it minutes later at best; fault suite seed 10 saw its group wait for good)."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job as RqJob
    from rq.serializers import JSONSerializer
    if not job.rq_id:
        return False
    connection = connection or redis_connection()
    try:
        rq_job = RqJob.fetch(job.rq_id, connection=connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return False
    state = rq_job.get_status(refresh=False)
    if state == "queued":
        return get_queue(rq_job.origin, connection).get_job_position(rq_job.id) is not None
    return state in ("deferred", "scheduled")


class _RowLogHandler(logging.Handler):
    """Copy log lines of a running job into its row, for the job page."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))

    def emit(self, record):
        """Keep the formatted line."""
        self.lines.append(self.format(record))


def run(job_id, func):
    """Run `func(job, **job.args)` for the Job row `job_id`, recording start, end and outcome."""
    job = db.session.get(Job, job_id)
    if job is None:
        raise FerryError(f"job {job_id} does not exist")  # rolled back, or a stale queue entry
    job.status = status.JOB_RUNNING
    job.started_at = utcnow()
    db.session.commit()

    handler = _RowLogHandler()
    ferry_log = logging.getLogger("ferry")
    ferry_log.addHandler(handler)
    previous_level = ferry_log.level
    if ferry_log.getEffectiveLevel() > logging.INFO:
        ferry_log.setLevel(logging.INFO)
    try:
        result = func(job, **(job.args or {}))
    except FerryError as exc:
        db.session.rollback()
        job = db.session.get(Job, job_id)
        job.status, job.error = status.JOB_FAILED, str(exc)
        log.warning("job %s (%s) failed: %s", job_id, job.name, exc)
    except Exception as exc:  # noqa: BLE001 - the runner must record every surprise
        db.session.rollback()
        job = db.session.get(Job, job_id)
        job.status = status.JOB_ERRORED
        job.error = f"{type(exc).__name__}: {exc}"
        job.traceback = tb.format_exc()
        log.exception("job %s (%s) errored", job_id, job.name)
    else:
        job.status = status.JOB_FINISHED
        job.result = result if isinstance(result, dict) else None
    finally:
        ferry_log.removeHandler(handler)
        ferry_log.setLevel(previous_level)
    job.log = (job.log or "") + "".join(line + "\n" for line in handler.lines)
    job.finished_at = utcnow()
    db.session.commit()
    return job.status

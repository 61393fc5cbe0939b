"""Prometheus metrics read from the database at scrape time.

The database is the truth and is shared by the web app and every worker, so a
collector that queries it on each scrape gives the same numbers whichever
gunicorn process answers, with no multiprocess directory to keep in step.
Totals are counters derived from the rows (they only drop if history is deleted).
The one exception is refused webhook deliveries: a refusal writes no row (an
unauthenticated caller must not be able to grow the database), so they are
counted in a Redis hash.
"""
import logging

from flask import current_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString
from sqlalchemy import func
from sqlalchemy.orm import selectinload

from app import status
from app.blobs import TaskResult
from app.extensions import db
from app.models import (ComputeResource, Evacuation, Job, MigrationGroup, MigrationTask, Server,
                        WebhookEvent, utcnow)
from app.services import ladder, workers

log = logging.getLogger("ferry.metrics")

DURATION_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
DOWNTIME_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)
SYNC_JOBS = ("sync_resource", "sync_all")
MIB = 1024 * 1024
DEADLINE_KNOBS = ("completion_timeout_per_gib_s", "min_deadline_s", "min_scale_gib")
REFUSED_KEY = "ferry:metrics:webhook-refused"  # a Redis hash: HTTP status -> deliveries
REFUSED_CODES = ("400", "401", "403", "404", "413")  # always exposed, 0 until one happens


def histogram(name, documentation, buckets, samples_by_label, label="mode"):
    """A HistogramMetricFamily from plain lists of observations, one list per label value."""
    family = HistogramMetricFamily(name, documentation, labels=[label])
    for value, samples in sorted(samples_by_label.items()):
        cumulative = [(floatToGoString(b), sum(1 for s in samples if s <= b)) for b in buckets]
        cumulative.append(("+Inf", len(samples)))
        family.add_metric([value], cumulative, sum_value=sum(samples))
    return family


def _counts(*columns, where=()):
    """{(column values...): count} for rows grouped by `columns`."""
    query = db.select(*columns, func.count()).where(*where).group_by(*columns)
    return {tuple(row[:-1]): row[-1] for row in db.session.execute(query)}


class FerryCollector:
    """Collects Ferry's metrics from the database on every scrape."""

    def collect(self):
        """Yield every metric family (prometheus_client calls this per scrape)."""
        now = utcnow()
        yield from _migrations()
        yield from _running_tasks(now)
        yield from _inventory_and_events()
        yield from _workers(now)
        yield from _webhook_refusals()


def _migrations():
    """Ended tasks by outcome, durations and downtimes, and what is running or waiting now."""
    tasks = CounterMetricFamily(
        "ferry_migrations", "Migration tasks that ended, by mode and outcome.",
        labels=["mode", "outcome"])
    for (mode, outcome), count in _counts(MigrationTask.mode, MigrationTask.status,
                                          where=[MigrationTask.status.in_(
                                              status.MIGRATION_DONE)]).items():
        tasks.add_metric([mode or "unknown", outcome], count)
    yield tasks

    durations, downtimes = {}, {}
    finished = db.session.execute(db.select(
        MigrationTask.mode, MigrationTask.started_at, MigrationTask.finished_at,
        MigrationTask.result).where(MigrationTask.status == status.MIGRATION_FINISHED))
    for mode, started, ended, result in finished:
        mode, result = mode or "unknown", TaskResult.of(result)
        seconds = (result.total_ms / 1000 if result.total_ms is not None else
                   (ended - started).total_seconds() if started and ended else None)
        if seconds is not None:
            durations.setdefault(mode, []).append(seconds)
        if result.downtime_ms is not None:
            downtimes.setdefault(mode, []).append(result.downtime_ms / 1000)
    yield histogram("ferry_migration_duration_seconds",
                    "Wall time of finished migration tasks.", DURATION_BUCKETS, durations)
    yield histogram("ferry_migration_downtime_seconds",
                    "Downtime of finished migration tasks (live: the switch-over pause).",
                    DOWNTIME_BUCKETS, downtimes)

    active = _counts(MigrationTask.status,
                     where=[MigrationTask.status.in_(status.MIGRATION_ACTIVE)])
    running = GaugeMetricFamily("ferry_migration_tasks_running",
                                "Migration tasks moving a server now.")
    running.add_metric([], active.get((status.MIGRATION_RUNNING,), 0))
    yield running
    waiting = GaugeMetricFamily("ferry_migration_tasks_waiting",
                                "Migration tasks in preflight or waiting for their turn.")
    waiting.add_metric([], active.get((status.MIGRATION_PENDING,), 0)
                       + active.get((status.MIGRATION_PREFLIGHT,), 0))
    yield waiting
    groups = GaugeMetricFamily("ferry_migration_groups_running", "Migration groups running.")
    groups.add_metric([], db.session.scalar(db.select(func.count()).where(
        MigrationGroup.status == status.MIGRATION_RUNNING)))
    yield groups


def _inventory_and_events():
    """Sync failures, evacuations, webhook events and compute resources by status."""
    syncs = CounterMetricFamily("ferry_sync_failures",
                                "Inventory sync jobs that failed or errored.", labels=["status"])
    failed = _counts(Job.status, where=[Job.name.in_(SYNC_JOBS),
                                        Job.status.in_((status.JOB_FAILED, status.JOB_ERRORED))])
    for job_status in (status.JOB_FAILED, status.JOB_ERRORED):
        syncs.add_metric([job_status], failed.get((job_status,), 0))
    yield syncs

    evacuations = GaugeMetricFamily("ferry_evacuations", "Evacuations by kind and status.",
                                    labels=["kind", "status"])
    for (kind, evac_status), count in _counts(Evacuation.kind, Evacuation.status).items():
        evacuations.add_metric([kind, evac_status], count)
    yield evacuations

    events = CounterMetricFamily("ferry_webhook_events",
                                 "Alerts received from monitoring tools, by what Ferry did.",
                                 labels=["action"])
    for (action,), count in _counts(WebhookEvent.action).items():
        events.add_metric([action], count)
    yield events

    nodes = GaugeMetricFamily("ferry_compute_resources", "Compute resources by status.",
                              labels=["status"])
    counts = _counts(ComputeResource.status)
    for resource_status in status.RESOURCE_STATUSES:
        nodes.add_metric([resource_status], counts.get((resource_status,), 0))
    yield nodes


def deadline_settings(config):
    """The ladder's deadline knobs from the site's configuration (as the live engine reads them)."""
    overrides = config.get("LADDER_OVERRIDES") or {}
    knobs = {"completion_timeout_per_gib_s": config["COMPLETION_TIMEOUT_PER_GIB"]}
    knobs.update({k: v for k, v in overrides.items() if k in DEADLINE_KNOBS})
    return ladder.LadderSettings(**knobs)


def task_deadline_s(settings, task):
    """Seconds after its start by which a running task should have ended.

    The live engine aborts at this deadline (post-copy excepted); offline moves
    are held to the same per-GiB rule here, so one stuck for hours is seen. The
    size is what libvirt reported moving, else the server's memory and disks.
    """
    data = task.progress_record.data_total
    if not data and task.server is not None:
        data = task.server.memory_mib * MIB + task.server.disk_size
    return ladder.completion_deadline_s(settings, data or 0)


def _running_tasks(now):
    """Age and deadline of every running task: the rules alert when age passes deadline."""
    age = GaugeMetricFamily("ferry_migration_task_age_seconds",
                            "Seconds since a running migration task started.",
                            labels=["task", "group", "mode"])
    deadline = GaugeMetricFamily("ferry_migration_task_deadline_seconds",
                                 "Seconds after its start by which a running task should end.",
                                 labels=["task", "group", "mode"])
    settings = deadline_settings(current_app.config)
    running = db.session.scalars(db.select(MigrationTask).where(
        MigrationTask.status == status.MIGRATION_RUNNING).options(
        selectinload(MigrationTask.server).selectinload(Server.disks)))
    for task in running:
        labels = [str(task.id), str(task.group_id), task.mode or "unknown"]
        age.add_metric(labels, max(0.0, (now - (task.started_at or task.created_at)).total_seconds()))
        deadline.add_metric(labels, task_deadline_s(settings, task))
    yield age
    yield deadline


def _workers(now):
    """Seconds since each worker process last wrote its heartbeat row."""
    seen = GaugeMetricFamily("ferry_worker_last_seen_seconds",
                             "Seconds since each worker process was last seen (its heartbeat).",
                             labels=["worker", "hostname"])
    for hostname, name, seconds in workers.last_seen(now):
        seen.add_metric([name, hostname], seconds)
    yield seen


def count_refused_delivery(code):
    """Count one webhook delivery refused with HTTP `code` (in Redis: a refusal leaves no row)."""
    _redis().hincrby(REFUSED_KEY, str(code), 1)


def _webhook_refusals():
    """Refused webhook deliveries by HTTP status; omitted (and logged) when Redis is down."""
    from redis.exceptions import RedisError
    try:
        counted = {k.decode(): int(v) for k, v in _redis().hgetall(REFUSED_KEY).items()}
    except RedisError as exc:
        log.warning("refused webhook deliveries not counted: %s", exc)
        return
    refused = CounterMetricFamily(
        "ferry_webhook_deliveries_refused",
        "Webhook deliveries answered with a 4xx (no or wrong token or signature 401/403, bad body 400).",
        labels=["code"])
    for code in sorted(set(REFUSED_CODES) | set(counted)):
        refused.add_metric([code], counted.get(code, 0))
    yield refused


def _redis():
    """One Redis client per app, kept in app.extensions (short timeouts: a scrape must answer)."""
    client = current_app.extensions.get("ferry_metrics_redis")
    if client is None:
        from redis import Redis  # here: importing redis costs every page and CLI command
        client = Redis.from_url(current_app.config["REDIS_URL"], socket_timeout=2,
                                socket_connect_timeout=2)
        current_app.extensions["ferry_metrics_redis"] = client
    return client

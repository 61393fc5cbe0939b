"""Prometheus metrics read from the database at scrape time.

The database is the truth and is shared by the web app and every worker, so a
collector that queries it on each scrape gives the same numbers whichever
gunicorn process answers, with no multiprocess directory to keep in step.
Totals are counters derived from the rows (they only drop if history is deleted).
"""
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString
from sqlalchemy import func

from app import status
from app.extensions import db
from app.models import ComputeResource, Evacuation, Job, MigrationGroup, MigrationTask, WebhookEvent

DURATION_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
DOWNTIME_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)
SYNC_JOBS = ("sync_resource", "sync_all")


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
            mode, result = mode or "unknown", result or {}
            seconds = (result["total_ms"] / 1000 if result.get("total_ms") is not None else
                       (ended - started).total_seconds() if started and ended else None)
            if seconds is not None:
                durations.setdefault(mode, []).append(seconds)
            if result.get("downtime_ms") is not None:
                downtimes.setdefault(mode, []).append(result["downtime_ms"] / 1000)
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

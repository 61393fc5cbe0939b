"""The periodic sync schedule: pure decision plus one tick against a real database and Redis."""
from datetime import datetime, timedelta, timezone

from app import status
from app.extensions import db
from app.models import ComputeResource, Job, MigrationGroup, MigrationTask
from worker import schedule

T = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)


def test_it_finds_resources_never_synced_or_synced_long_ago():
    recent = {1: T - timedelta(seconds=30), 2: T - timedelta(seconds=301)}
    assert schedule.due([1, 2, 3], recent, T, 300) == [2, 3]


def test_it_enqueues_one_sync_per_due_resource_and_not_twice(app, redis_conn):
    with app.app_context():
        for name in ("node1", "node2"):
            db.session.add(ComputeResource(name=name, host="h", user="root", key_path="/k"))
        db.session.commit()
    first = schedule.tick(app)
    second = schedule.tick(app)
    assert len(first) == 2 and second == []
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(Job)) == 2


def test_it_queues_one_recovery_pass_at_a_time_only_for_orphans(app, redis_conn):
    assert schedule.reconcile_tick(app) is None  # nothing to settle: no job, no row
    with app.app_context():
        node1, node2 = (ComputeResource(name=n, host="h", user="root", key_path="/k")
                        for n in ("node1", "node2"))
        task = MigrationTask(source=node1, destination=node2, mode=status.MODE_LIVE,
                             status=status.MIGRATION_RUNNING,
                             heartbeat_at=T)  # its job stopped beating long ago
        db.session.add(MigrationGroup(status=status.MIGRATION_RUNNING, options={}, tasks=[task]))
        db.session.commit()
    first = schedule.reconcile_tick(app)
    assert first is not None and schedule.reconcile_tick(app) is None
    with app.app_context():
        db.session.get(Job, first).status = "finished"
        db.session.commit()
    again = schedule.reconcile_tick(app)
    assert again is not None and again != first
    # A pass left "running" by a dead worker stops counting once it is old.
    later = datetime.now(timezone.utc) + timedelta(seconds=schedule.RECONCILE_STALE_S + 1)
    assert schedule.reconcile_tick(app, now=later) is not None

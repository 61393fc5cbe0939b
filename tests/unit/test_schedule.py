"""The periodic schedule: pure decision plus ticks against a real database and Redis."""
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


def test_it_runs_a_recovery_pass_in_the_thread_only_when_something_needs_one(app, redis_conn):
    assert schedule.recovery_tick(app) == []  # nothing to settle: no job, no row
    with app.app_context():
        node1, node2 = (ComputeResource(name=n, host="h", user="root", key_path="/k")
                        for n in ("node1", "node2"))
        task = MigrationTask(source=node1, destination=node2, mode=status.MODE_LIVE,
                             status=status.MIGRATION_PENDING, phase="waiting",
                             heartbeat_at=T)  # its job died waiting, long ago
        group = MigrationGroup(status=status.MIGRATION_RUNNING, options={}, tasks=[task])
        db.session.add(group)
        db.session.commit()
        task_id, group_id = task.id, group.id

    assert schedule.recovery_tick(app) == [(task_id, "requeued"),
                                           (None, f"group {group_id} requeued")]
    assert schedule.recovery_tick(app) == []  # its new job waits in Redis
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(Job).where(
            Job.name == "reconcile")) == 0  # no pass queued behind migrations
        [job] = db.session.scalars(db.select(Job)).all()
        assert (job.name, job.args, job.status) == ("run_group", {"group_id": group_id},
                                                    status.JOB_PENDING)


def test_a_recovery_pass_runs_in_a_child_process_never_in_the_worker(app, redis_conn, monkeypatch):
    # libvirt's event loop cannot run in a child of a process that ran it, and the worker forks
    # a work horse per job: the pass (which talks to nodes) runs in a child of its own.
    import os
    from app.services import recovery
    monkeypatch.setattr(recovery, "orphans", lambda now: [1])
    monkeypatch.setattr(recovery, "reconcile", lambda: [(7, f"settled in {os.getpid()}")])
    done = schedule.recovery_tick(app)
    assert len(done) == 1 and done[0][0] == 7
    assert done[0][1] != f"settled in {os.getpid()}"


def test_a_recovery_pass_that_dies_reports_nothing_and_the_worker_goes_on(app, redis_conn, monkeypatch):
    from app.services import recovery
    monkeypatch.setattr(recovery, "orphans", lambda now: [1])

    def boom():
        raise RuntimeError("the pass broke")
    monkeypatch.setattr(recovery, "reconcile", boom)
    assert schedule.recovery_tick(app) == []

"""The periodic sync schedule: pure decision plus one tick against a real database and Redis."""
from datetime import datetime, timedelta, timezone

from app.extensions import db
from app.models import ComputeResource, Job
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

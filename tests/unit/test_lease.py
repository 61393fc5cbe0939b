"""Leases: compare-and-set ownership of tasks and groups, on SQLite and PostgreSQL alike."""
from datetime import timedelta

import pytest
from sqlalchemy import create_engine

from app import status
from app.extensions import db
from app.models import ComputeResource, MigrationGroup, MigrationTask, TaskEvent, utcnow
from app.services import lease

A, B = "node-a:10:ferry-1", "node-b:20:ferry-2"


@pytest.fixture
def database_url(db_url):
    """Every test here runs once on SQLite and once on PostgreSQL."""
    return db_url


@pytest.fixture
def task_id(app_context):
    """A running task of a running group."""
    node1, node2 = (ComputeResource(name=n, host="h", key_path="/k") for n in ("n1", "n2"))
    task = MigrationTask(source=node1, destination=node2, mode=status.MODE_LIVE,
                         status=status.MIGRATION_RUNNING)
    db.session.add(MigrationGroup(status=status.MIGRATION_RUNNING, options={}, tasks=[task]))
    db.session.commit()
    return task.id


def row(task_id):
    """The task as the database has it now."""
    db.session.expire_all()
    return db.session.get(MigrationTask, task_id)


def test_it_lets_one_owner_win_and_the_other_wait(task_id):
    assert lease.take(lease.TASK, task_id, 30, job="rq-1", owner=A) is True
    assert lease.take(lease.TASK, task_id, 30, job="rq-2", owner=B) is False
    assert lease.take(lease.TASK, task_id, 30, job="rq-1", owner=A) is True  # its own again

    task = row(task_id)
    assert (task.lease_owner, task.lease_job) == (A, "rq-1")
    assert task.heartbeat_at is not None and task.lease_until > utcnow()


def test_it_lets_another_owner_take_an_expired_lease(task_id):
    long_ago = utcnow() - timedelta(seconds=60)
    assert lease.take(lease.TASK, task_id, 30, owner=A, now=long_ago)

    assert lease.take(lease.TASK, task_id, 30, owner=B) is True
    assert row(task_id).lease_owner == B


def test_it_renews_and_releases_only_for_its_owner(task_id):
    lease.take(lease.TASK, task_id, 30, owner=A)
    before = row(task_id).lease_until

    assert lease.renew(lease.TASK, task_id, 30, owner=B) is False
    assert lease.release(lease.TASK, task_id, owner=B) is False
    assert lease.renew(lease.TASK, task_id, 90, owner=A) is True
    assert row(task_id).lease_until > before

    assert lease.release(lease.TASK, task_id, owner=A) is True
    assert row(task_id).lease_owner is None
    assert lease.take(lease.TASK, task_id, 30, owner=B) is True  # free at once


def test_it_refuses_a_lease_held_by_a_live_owner(task_id):
    lease.take(lease.TASK, task_id, 30, job="rq-1", owner=A)
    with pytest.raises(lease.LeaseHeld, match=f"held by {A} \\(job rq-1\\)"):
        with lease.Lease(lease.TASK, task_id, owner=B):
            pass
    assert row(task_id).lease_owner == A


def test_it_flags_and_records_a_lease_another_owner_took(task_id):
    with lease.Lease(lease.TASK, task_id, ttl=30, owner=A) as held:
        assert held.renew_now() is True
        held.check()
        # Another owner takes the row over (as recovery would after an expiry).
        db.session.execute(db.update(MigrationTask).where(MigrationTask.id == task_id)
                           .values(lease_owner=B))
        db.session.commit()

        assert held.renew_now() is False
        assert held.lost is True
        with pytest.raises(lease.LeaseLost, match=f"held by {B}"):
            held.check()
    assert row(task_id).lease_owner == B  # the loser did not release what is not its own
    [lost] = db.session.scalars(db.select(TaskEvent).filter_by(kind="lease-lost")).all()
    assert A in lost.message and "stops acting" in lost.message


def test_it_keeps_a_lease_through_a_database_error_until_it_runs_out(task_id, tmp_path):
    with lease.Lease(lease.TASK, task_id, ttl=30, owner=A) as held:
        good = held.engine
        held.engine = create_engine(f"sqlite:///{tmp_path}/missing/dir/ferry.sqlite")
        assert held.renew_now() is True and held.lost is False  # still within its TTL
        held.check()

        held.until = utcnow() - timedelta(seconds=1)  # ...and now the TTL has passed
        assert held.renew_now() is False
        assert held.lost and "refused its renewal" in held.reason
        with pytest.raises(lease.LeaseLost):
            held.check()
        held.engine = good


def test_it_sees_a_lease_that_was_not_renewed_in_time_as_lost(task_id):
    with lease.Lease(lease.TASK, task_id, ttl=30, owner=A) as held:
        held.until = utcnow() - timedelta(seconds=1)  # the renewal thread is stuck somewhere
        with pytest.raises(lease.LeaseLost, match="ran out"):
            held.check()


def test_it_names_the_owner_by_host_pid_and_worker(monkeypatch):
    monkeypatch.setenv("FERRY_WORKER_HOST", "second-machine")
    with lease.acting_as("recovery"):
        host, pid, name = lease.me().split(":")
    assert (host, name) == ("second-machine", "recovery") and int(pid) > 0

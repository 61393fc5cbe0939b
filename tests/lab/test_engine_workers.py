"""Groups, limits, cancel and recovery with real `python -m worker` processes.

The workers share the test's PostgreSQL database and Redis db 14, as workers
on several machines would; node2's link is shaped so that a migration stays
in flight long enough to be observed, cancelled or orphaned.
"""
import pytest
from rq import Worker
from rq.job import Job as RqJob
from rq.serializers import JSONSerializer

from app import status
from app.extensions import db
from app.models import Job, MigrationGroup, MigrationTask, utcnow
from app.services import limits, migration
from tests.fixtures.fleet import (images, migrate, note, report_of, start, sync, task_row,
                                  wait_until, where)

pytestmark = pytest.mark.lab


@pytest.fixture
def database_url(postgres_url):
    """Every process of these tests shares one PostgreSQL database."""
    return postgres_url


def enqueue(app, group_id):
    """Queue a started group's job for the workers."""
    with app.app_context():
        migration.enqueue_group(db.session.get(MigrationGroup, group_id))


def in_flight(app, task_id):
    """True once libvirt's job for the task runs (its step is "migrate") and has reported progress."""
    row = task_row(app, task_id)
    return row["phase"] == "migrate" and (row["progress"] or {}).get("data_processed")


def overlapping(a, b):
    """True when two tasks' [started_at, finished_at] intervals overlap."""
    return a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"]


def test_it_runs_three_groups_refuses_a_fourth_serializes_nodes_and_cancels(
        app, lab, lab_server, fleet, workers, worker_redis, shaped_link):
    workers.start(4)
    guests = {name: lab_server(node, name, memory=128)
              for name, node in (("grp-a", "node1"), ("grp-b", "node2"), ("grp-c", "node3"))}
    lab_server("node3", "grp-d", memory=128, stopped=True)
    for guest in guests.values():
        lab.wait_for_guest(guest["ip"], 120)
    sync(app, fleet)
    wait_until(lambda: len(Worker.all(connection=worker_redis)) == 4, 120,
               lambda: "4 workers registered\n" + workers.logs())

    # Three groups pass preflight on the real link and take the three group slots; every
    # task touches node2, so with one task per node they must run one after the other.
    started = [start(app, fleet, [name], to)
               for name, to in (("grp-a", "node2"), ("grp-b", "node3"), ("grp-c", "node2"))]
    tasks = [task_ids[0] for _, task_ids in started]
    shaped_link("node2", 8)  # ~1 MB/s: the first migration stays in flight
    for group_id, _ in started:
        enqueue(app, group_id)

    first = wait_until(lambda: next((t for t in tasks if in_flight(app, t)), None), 120,
                       lambda: "a migration in flight\n" + workers.logs())
    waiting = [t for t in tasks if t != first]
    wait_until(lambda: all("waiting" in dict(task_row(app, t)["events"]) for t in waiting), 60,
               "the two other tasks waiting for node2")

    # A fourth group (node3 -> node1, off the shaped link) finds three running: refused.
    fourth = migrate(app, fleet, ["grp-d"], "node1", live=False)
    assert fourth["status"] == status.MIGRATION_FAILED
    assert "3 migration groups are already running" in fourth["tasks"][0]["error"]
    assert fourth["tasks"][0]["started_at"] is None
    assert where(lab, "grp-d") == {"node3": "shut off"}
    assert not {f for f in images(lab, "node1") if "grp-d" in f}

    # Cancel the migration in flight: libvirt aborts, the server stays on its source.
    assert in_flight(app, first)
    with app.app_context():
        migration.request_cancel(first)
    wait_until(lambda: task_row(app, first)["status"] in status.MIGRATION_DONE, 90,
               lambda: "the cancel to land\n" + workers.logs())
    cancelled = task_row(app, first)
    name = cancelled["server"]
    assert cancelled["status"] == status.MIGRATION_CANCELLED, cancelled
    assert where(lab, name) == {cancelled["source"]: "running"}
    assert not {f for f in images(lab, cancelled["destination"]) if name in f}
    assert lab.guest_status(guests[name]["ip"])["seed_md5_ok"] is True

    shaped_link("node2", "off")
    wait_until(lambda: all(task_row(app, t)["status"] in status.MIGRATION_DONE for t in waiting),
               240, lambda: "the two waiting tasks to finish\n" + workers.logs())
    rows = {t: task_row(app, t) for t in tasks}
    for t in waiting:
        assert rows[t]["status"] == status.MIGRATION_FINISHED, rows[t]
        assert where(lab, rows[t]["server"]) == {rows[t]["destination"]: "running"}

    # From the recorded timestamps: no two tasks sharing a node ever ran at the same time.
    for a in tasks:
        for b in tasks:
            shared = {rows[a]["source"], rows[a]["destination"]} & {
                rows[b]["source"], rows[b]["destination"]}
            if a < b and shared:
                assert not overlapping(rows[a], rows[b]), (shared, rows[a], rows[b])
    # The three group jobs ran in three different worker processes.
    with app.app_context():
        rq_ids = [db.session.get(Job, j).rq_id for j in db.session.scalars(
            db.select(Job.id).where(Job.name == "run_group"))]
    names = {RqJob.fetch(i, connection=worker_redis, serializer=JSONSerializer).worker_name
             for i in rq_ids}
    assert len(rq_ids) == 3 and len(names) == 3, names
    with app.app_context():
        assert limits.holders(limits.GROUP) == [] and limits.holders(limits.RESOURCE) == []
    for group_id, _ in started:
        report_of(app, group_id)  # predicted vs actual for the two that moved


def test_it_settles_a_live_migration_whose_worker_was_killed(
        app, lab, lab_server, fleet, workers, shaped_link):
    orphan_after = 8  # > the 5 s heartbeat
    first, = workers.start(1, orphan_after=orphan_after)
    guest = lab_server("node1", "kill-move", memory=128)
    lab.wait_for_guest(guest["ip"], 90)
    sync(app, fleet)
    group_id, (task_id,) = start(app, fleet, ["kill-move"], "node2")
    shaped_link("node2", 8)
    enqueue(app, group_id)
    wait_until(lambda: in_flight(app, task_id), 120,
               lambda: "the migration in flight\n" + workers.logs())

    workers.kill(first)  # worker and work horse, SIGKILL: no cleanup code runs
    shaped_link("node2", "off")
    assert task_row(app, task_id)["status"] == status.MIGRATION_RUNNING

    # Once the heartbeat is stale, a new worker reconciles the task at its start.
    def stale():
        beat = task_row(app, task_id)["heartbeat_at"]
        return (utcnow() - beat).total_seconds() > orphan_after + 1
    wait_until(stale, 30, "the heartbeat to go stale")
    workers.start(1, orphan_after=orphan_after)
    wait_until(lambda: task_row(app, task_id)["status"] in status.MIGRATION_DONE, 180,
               lambda: "the new worker to settle the task\n" + workers.logs())

    row = task_row(app, task_id)
    placed = where(lab, "kill-move")
    assert len(placed) == 1, placed  # defined on exactly one node
    assert "reconciled" in dict(row["events"]), row["events"]
    if row["status"] == status.MIGRATION_FINISHED:
        assert placed == {"node2": "running"}
        assert not {f for f in images(lab, "node1") if "kill-move" in f}
    else:
        assert row["status"] == status.MIGRATION_FAILED, row
        assert placed == {"node1": "running"}
        assert not {f for f in images(lab, "node2") if "kill-move" in f}
    with app.app_context():
        task = db.session.get(MigrationTask, task_id)
        assert task.server.compute_resource.name == next(iter(placed))
        assert task.group.status in status.MIGRATION_DONE
        assert limits.holders(limits.GROUP) == [] and limits.holders(limits.RESOURCE) == []
    assert lab.guest_status(guest["ip"])["seed_md5_ok"] is True
    note("recovery", status=row["status"], node=next(iter(placed)),
         reconciled=dict(row["events"])["reconciled"])

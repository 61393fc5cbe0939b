"""Ownership, queues and recovery of migration groups without the lab.

The runners move servers on real nodes; here they are replaced by a fake that
records each call and ends the task as a finished move (the outer I/O
boundary: no libvirt node runs in these tests). Everything else is real: the
group job, the leases, the claims, the outbox, Redis db of the tests, RQ
workers, the recovery pass, on SQLite and PostgreSQL.
"""
import itertools
import threading
import time
from datetime import timedelta

import pytest

from app import status
from app.extensions import db
from app.models import (Claim, ComputeResource, Evacuation, Job, MigrationGroup, MigrationTask,
                        Outbox, Server, utcnow)
from app.services import engine, jobs, lease, limits, migration, outbox, recovery, timeline
from worker import jobs as worker_jobs
from worker import schedule

LONG_AGO = timedelta(minutes=10)
_servers = itertools.count(1)
DEAD = "dead-host:1:ferry-9"


@pytest.fixture
def database_url(db_url):
    """Every test here runs once on SQLite and once on PostgreSQL."""
    return db_url


class _Calls(list):
    """A list that can carry the fake runner along."""


@pytest.fixture
def moves(monkeypatch):
    """The fake runner's calls: [task ids it moved] (in this process); with `moves.runner.entered`
    and `.hold` set to Events, it signals it began and waits to be let go on."""
    done = _Calls()

    def fake_run(task, lease=None, nodes=None):
        done.append(task.id)
        if fake_run.entered is not None:
            fake_run.entered.set()
            assert fake_run.hold.wait(60), "the test never let the runner go on"
        timeline.finish_success(task, "Moved (fake runner).", {"total_ms": 1})

    fake_run.entered = fake_run.hold = None
    for mode in (status.MODE_LIVE, status.MODE_OFFLINE):
        monkeypatch.setitem(engine.RUNNERS, mode, fake_run)
    done.runner = fake_run
    return done


@pytest.fixture
def nodes(app_context):
    """Three compute resources whose address refuses every connection at once."""
    made = [ComputeResource(name=f"node{i}", host="127.0.0.1", port=1, key_path="/k")
            for i in (1, 2, 3)]
    db.session.add_all(made)
    db.session.commit()
    return made


def running_group(nodes, *routes, started_ago=None, **task_fields):
    """A started group (slot taken) with a pending task per (source index, destination index)."""
    group = MigrationGroup(status=status.MIGRATION_RUNNING, options={},
                           started_at=utcnow() - (started_ago or timedelta(0)))
    for src, dst in routes:
        n = next(_servers)
        server = Server(uuid=f"00000000-0000-4000-8000-{n:012d}", name=f"web{n}",
                        compute_resource=nodes[src])
        group.tasks.append(MigrationTask(server=server, source=nodes[src],
                                         destination=nodes[dst], mode=status.MODE_LIVE,
                                         status=status.MIGRATION_PENDING, **task_fields))
    db.session.add(group)
    db.session.commit()
    assert limits.claim_group_slot(group.id)
    return group


def fresh(model, row_id):
    """A row as the database has it now."""
    db.session.expire_all()
    return db.session.get(model, row_id)


def moved(tasks):
    """How many times the fake runner moved each task, from their timelines."""
    return [sum(e.message == "Moved (fake runner)." for e in fresh(MigrationTask, t.id).events)
            for t in tasks]


def run_job(job_id):
    """Run a run_group Job row in this thread as a worker's horse would."""
    return jobs.run(job_id, worker_jobs.run_group.__wrapped__)


# ---------------------------------------------------------------- one owner per group

def test_it_lets_one_of_two_concurrent_group_jobs_act(app, nodes, moves):
    group = running_group(nodes, (0, 1))
    group_id, task_id = group.id, group.tasks[0].id
    first, second = (jobs.create("run_group", {"group_id": group_id}).id for _ in range(2))
    moves.runner.entered, moves.runner.hold = threading.Event(), threading.Event()

    def work():
        with app.app_context(), lease.acting_as("worker-a"):
            run_job(first)
            db.session.remove()

    thread = threading.Thread(target=work)
    thread.start()
    assert moves.runner.entered.wait(60)
    try:
        with lease.acting_as("worker-b"):
            assert run_job(second) == status.JOB_FINISHED
        left = fresh(Job, second)
        assert f"group {group_id} is held by" in left.result["left_alone"]
        assert ":worker-a (job" in left.result["left_alone"]
        assert "group" in left.log and "left alone" in left.log
        assert limits.holders(limits.GROUP) == [f"group:{group_id}"]  # the second kept its hands off
        assert fresh(MigrationGroup, group_id).status == status.MIGRATION_RUNNING
    finally:
        moves.runner.hold.set()
        thread.join(60)

    assert moves == [task_id]
    assert fresh(MigrationTask, task_id).status == status.MIGRATION_FINISHED
    assert fresh(MigrationGroup, group_id).status == status.MIGRATION_FINISHED
    assert fresh(Job, first).result == {group.tasks[0].server.name: status.MIGRATION_FINISHED}
    assert limits.holders(limits.GROUP) == [] and limits.holders(limits.RESOURCE) == []


def test_it_never_runs_a_finished_group_again_when_its_job_is_sent_twice(
        app_context, nodes, moves, redis_conn, work):
    group = running_group(nodes, (0, 1), (1, 2))
    migration.enqueue_group(group)
    migration.enqueue_group(group)  # two recovery passes sent it, say

    work()

    assert moved(group.tasks) == [1, 1]  # (in the forked work horse: counted from the timeline)
    rows = db.session.scalars(db.select(Job).order_by(Job.id)).all()
    assert [j.status for j in rows] == [status.JOB_FINISHED, status.JOB_FINISHED]
    assert rows[1].result == {"left_alone": f"group {group.id} is finished: nothing to run"}


def test_it_leaves_a_task_leased_by_a_live_owner_alone(app_context, nodes, moves):
    group = running_group(nodes, (0, 1))
    task = group.tasks[0]
    assert lease.take(lease.TASK, task.id, 60, owner=DEAD)  # alive for another minute

    migration.run_group(group.id)

    assert moves == []
    assert fresh(MigrationTask, task.id).status == status.MIGRATION_PENDING
    group = fresh(MigrationGroup, group.id)
    assert group.status == status.MIGRATION_RUNNING  # not ended while a task is left
    assert limits.holders(limits.GROUP) == [f"group:{group.id}"]


# ---------------------------------------------------------------- waiting for nodes

def test_it_gives_up_waiting_for_a_busy_node_and_says_who_holds_it(app_context, nodes, moves):
    app_context.config["NODE_WAIT_TIMEOUT"] = 0
    group = running_group(nodes, (0, 1))
    task = group.tasks[0]
    assert limits.claim_resources(99, [nodes[1].id])

    migration.run_group(group.id)

    task = fresh(MigrationTask, task.id)
    assert moves == [] and task.status == status.MIGRATION_FAILED
    assert "waiting 0 s (FERRY_NODE_WAIT_TIMEOUT): node2 is busy with task 99" in task.error
    assert task.error.endswith("Nothing was moved.")
    waiting = [e for e in task.events if e.kind == "waiting"]
    assert [e.message for e in waiting] == ["Waiting: node2 is busy with task 99."]
    assert limits.holders(limits.RESOURCE) == ["task:99"]
    assert fresh(MigrationGroup, group.id).status == status.MIGRATION_FAILED


# ---------------------------------------------------------------- the outbox

def test_it_starts_a_group_while_redis_is_down_and_sends_it_once_back(
        app_context, nodes, moves, redis_conn, work, monkeypatch):
    # The preflight probes nodes over SSH (outer I/O): here it passes without asking them.
    monkeypatch.setattr(migration.preflight, "run", lambda servers, destination, options: {
        "results": [], "summary": {"needs_acknowledgement": False}, "eta": {}})
    server = Server(uuid="00000000-0000-4000-8000-0000000000aa", name="db1",
                    compute_resource=nodes[0], state=status.SERVER_RUNNING)
    db.session.add(server)
    db.session.commit()
    redis_url = app_context.config["REDIS_URL"]
    app_context.config["REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens there

    group = migration.start_group(migration.Request(server_ids=(server.id,),
                                                    destination_id=nodes[1].id))

    assert fresh(MigrationGroup, group.id).status == status.MIGRATION_RUNNING
    [row] = outbox.unsent()
    assert (row.name, row.args, row.attempts) == ("run_group", {"group_id": group.id}, 1)
    assert "ConnectionError" in row.last_error
    assert db.session.scalars(db.select(Job)).all() == []  # no Job row says "pending" forever

    app_context.config["REDIS_URL"] = redis_url
    [job_id] = outbox.flush()
    assert outbox.unsent() == [] and outbox.flush() == []
    row = fresh(Outbox, row.id)
    assert row.job_id == job_id and row.sent_at is not None and row.attempts == 2
    work()
    assert fresh(Job, job_id).status == status.JOB_FINISHED
    assert fresh(MigrationGroup, group.id).status == status.MIGRATION_FINISHED
    assert moved(group.tasks) == [1]


def test_it_sends_an_outbox_row_from_the_scheduler_tick(app, redis_conn):
    with app.app_context():
        outbox.add("run_group", {"group_id": 5}, queue=jobs.QUEUE_MIGRATIONS)
        db.session.commit()
    [job_id] = schedule.flush_tick(app)
    assert schedule.flush_tick(app) == []
    assert jobs.get_queue(jobs.QUEUE_MIGRATIONS, redis_conn).job_ids == [f"ferry-job-{job_id}"]


# ---------------------------------------------------------------- recovery

def dead_running_task(nodes, group=None):
    """A running task whose worker died: its lease ran out, its claims are still held."""
    group = group or running_group(nodes, (0, 1), started_ago=LONG_AGO)
    task = group.tasks[0]
    task.status, task.phase, task.started_at = status.MIGRATION_RUNNING, "migrating", utcnow()
    db.session.commit()
    assert lease.take(lease.TASK, task.id, 30, owner=DEAD, now=utcnow() - LONG_AGO)
    assert lease.take(lease.GROUP, group.id, 30, owner=DEAD, now=utcnow() - LONG_AGO)
    assert limits.claim_resources(task.id, [task.source_id, task.destination_id],
                                  server_id=task.server_id)
    return task


def test_it_frees_the_claims_of_a_task_whose_recovery_blew_up(app_context, nodes, monkeypatch):
    # reconcile_task asks the nodes; here it fails in a way nobody planned for.
    def explode(task, held=None):
        raise RuntimeError("surprise")
    monkeypatch.setattr(recovery, "reconcile_task", explode)
    evac = Evacuation(kind=status.EVACUATION_EVACUATE, status=status.EVACUATION_RUNNING)
    db.session.add(evac)
    db.session.commit()
    group = running_group(nodes, (0, 1), started_ago=LONG_AGO)
    group.options = {"evacuation_id": evac.id}
    evac.group_id = group.id
    db.session.commit()
    task = dead_running_task(nodes, group)

    assert recovery.reconcile() == [(task.id, recovery.ATTENTION)]

    task = fresh(MigrationTask, task.id)
    assert task.status == status.MIGRATION_ATTENTION
    assert "Recovery could not settle this task: RuntimeError: surprise" in task.error
    assert db.session.scalars(db.select(Claim)).all() == []  # nodes, server and group slot
    assert task.lease_owner is None
    assert fresh(MigrationGroup, group.id).status == status.MIGRATION_FAILED
    assert fresh(Evacuation, evac.id).status == status.EVACUATION_FAILED


def test_it_leaves_a_task_whose_lease_is_alive(app_context, nodes, monkeypatch):
    monkeypatch.setattr(recovery, "reconcile_task", lambda task, held=None: 1 / 0)
    group = running_group(nodes, (0, 1))
    task = group.tasks[0]
    task.status = status.MIGRATION_RUNNING
    db.session.commit()
    assert lease.take(lease.TASK, task.id, 60, owner=DEAD)

    assert recovery.orphans() == [] and recovery.reconcile() == []
    assert fresh(MigrationTask, task.id).status == status.MIGRATION_RUNNING


def test_it_settles_a_dead_task_from_the_scheduler_while_the_only_worker_waits(
        app, nodes, moves):
    # The only worker's job waits for node2, held by a task whose worker died. The
    # recovery pass runs in the worker's scheduler thread, not queued behind that job.
    app.config["NODE_WAIT_TIMEOUT"] = 300
    dead = dead_running_task(nodes)
    waiting = running_group(nodes, (1, 2))
    dead_id, group_id, task_id = dead.id, waiting.id, waiting.tasks[0].id
    job_id = jobs.create("run_group", {"group_id": group_id}).id

    def horse():
        with app.app_context(), lease.acting_as("worker-a"):
            run_job(job_id)
            db.session.remove()

    def said_waiting():
        return [e.message for e in fresh(MigrationTask, task_id).events if e.kind == "waiting"]

    thread = threading.Thread(target=horse)
    thread.start()
    try:
        wait_for(said_waiting)
        assert said_waiting() == [f"Waiting: node2 is busy with task {dead_id}."]
        db.session.commit()  # the test's own session lets go of SQLite before the pass

        done = schedule.recovery_tick(app)
        assert (dead_id, recovery.ATTENTION) in done, done
    finally:
        thread.join(60)
    assert fresh(MigrationTask, dead_id).status == status.MIGRATION_ATTENTION
    assert fresh(MigrationTask, task_id).status == status.MIGRATION_FINISHED
    assert moves == [task_id]
    assert fresh(Job, job_id).status == status.JOB_FINISHED
    assert db.session.scalars(db.select(Claim)).all() == []


def wait_for(condition, timeout=60):
    """Poll a condition (a thread is still getting there); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_it_sends_again_a_group_whose_queued_job_redis_lost(app_context, nodes, redis_conn):
    group = running_group(nodes, (0, 1), started_ago=LONG_AGO)
    lost = Job(name="run_group", args={"group_id": group.id}, status=status.JOB_PENDING,
               rq_id="ferry-job-lost", created_at=utcnow() - LONG_AGO)
    db.session.add(lost)
    db.session.commit()
    assert recovery.stalled_groups() == [group]

    assert recovery.reconcile() == [(None, f"group {group.id} requeued")]

    assert fresh(Job, lost.id).status == status.JOB_FAILED
    assert "never started" in fresh(Job, lost.id).error
    assert jobs.get_queue(jobs.QUEUE_MIGRATIONS, redis_conn).count == 1
    assert recovery.stalled_groups() == []  # its new job waits in Redis: not sent twice


def test_it_does_not_send_a_group_whose_job_waits_in_redis_or_whose_lease_lives(
        app_context, nodes, redis_conn):
    queued = running_group(nodes, (0, 1), started_ago=LONG_AGO)
    job = jobs.enqueue("run_group", {"group_id": queued.id}, queue=jobs.QUEUE_MIGRATIONS)
    job.created_at = utcnow() - LONG_AGO  # queued long ago behind other migrations
    leased = running_group(nodes, (1, 2), started_ago=LONG_AGO)
    assert lease.take(lease.GROUP, leased.id, 60, owner=DEAD)
    fresh_group = running_group(nodes, (2, 0))  # just started: its caller sends it
    db.session.commit()

    assert recovery.stalled_groups() == []
    assert fresh_group.id and recovery.reconcile() == []


def test_it_ends_the_group_of_a_dead_task_once_the_dead_jobs_group_lease_runs_out(
        app_context, nodes, monkeypatch):
    # reconcile_task asks the nodes (lab); here it finds the server at home and says so.
    def settle(task, held=None):
        timeline.finish(task, status.MIGRATION_FAILED, "Rolled back: the server stays home.")
        return recovery.Verdict(recovery.FAILED_SOURCE_INTACT, "the source runs it")
    monkeypatch.setattr(recovery, "reconcile_task", settle)
    task = dead_running_task(nodes)
    # The dead job renewed its group lease a moment after its task's last renewal.
    assert lease.take(lease.GROUP, task.group_id, 1, owner=DEAD)

    assert recovery.reconcile() == [(task.id, recovery.FAILED_SOURCE_INTACT)]

    assert fresh(MigrationGroup, task.group_id).status == status.MIGRATION_FAILED
    assert db.session.scalars(db.select(Claim)).all() == []


def test_it_leaves_a_task_to_whoever_took_its_lease(app_context, nodes, monkeypatch):
    def lose_it(task, lease=None, nodes=None):
        # Another owner took the task over (its renewals failed for longer than the TTL).
        db.session.execute(db.update(MigrationTask).where(MigrationTask.id == task.id)
                           .values(lease_owner=DEAD))
        db.session.commit()
        lease.renew_now()
        lease.check()  # between two steps: raises LeaseLost
    monkeypatch.setitem(engine.RUNNERS, status.MODE_LIVE, lose_it)
    group = running_group(nodes, (0, 1))
    task_id = group.tasks[0].id

    migration.run_group(group.id)

    task = fresh(MigrationTask, task_id)
    assert task.status == status.MIGRATION_RUNNING and task.lease_owner == DEAD
    assert "lease-lost" in [e.kind for e in task.events]
    assert ("resource", str(nodes[0].id), f"task:{task_id}") in [
        (c.kind, c.key, c.holder) for c in db.session.scalars(db.select(Claim))]
    assert fresh(MigrationGroup, group.id).status == status.MIGRATION_RUNNING

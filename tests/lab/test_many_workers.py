"""Many workers: four `python -m worker` processes run randomly overlapping groups, on
PostgreSQL and again on SQLite (one database file shared by every process).

Two of the workers pose as a second machine (FERRY_WORKER_HOST, FERRY_WORKER_NAME), so lease
owners read like those of workers on two hosts. The test process starts groups through the
service as a user would (preflight, then a group slot, FERRY_MAX_PARALLEL_GROUPS=3), so some
are refused; each accepted group moves 1-2 servers of one state (live or offline) to one of
three nodes, drawn from a seeded random generator; with FERRY_TASKS_PER_RESOURCE=1 their tasks
wait for each other's nodes. Two tasks are cancelled mid-flight (their destination's link is
slowed while they run, so the cancel lands in the disk or memory copy).

Then: the journal shows one owner per task and each step at most once (no task ran twice);
no two tasks sharing a node overlapped in time; never more than three groups ran; refused
groups moved nothing; every task and group ended; no claim or slot is left; each server is
defined on exactly one node (libvirt on every node), in the state it had, with no file of it
left elsewhere; the cancelled ones stayed on their source.

FERRY_MANY_WORKERS_GROUPS sets how many groups are accepted (8 by default, so `make test`
stays short); FERRY_MANY_WORKERS_SEED the draw (7). The full run of 20, one database at a time:

    FERRY_MANY_WORKERS_GROUPS=20 FERRY_LAB_NAME=ferrytest FERRY_LAB_NET=78 \
        FERRY_TEST_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/ferry_test \
        .venv/bin/python -m pytest -q -p no:cacheprovider tests/lab/test_many_workers.py
"""
import os
import random
import threading
import time

import pytest
from rq import Worker

from app import status
from app.extensions import db
from app.models import Claim, Job, MigrationGroup, MigrationStep, MigrationTask, Server
from app.services import limits, migration
from tests.fixtures.fleet import images, make_request, note, sync, task_row, wait_until

pytestmark = pytest.mark.lab

GROUPS = int(os.environ.get("FERRY_MANY_WORKERS_GROUPS", "8"))
SEED = int(os.environ.get("FERRY_MANY_WORKERS_SEED", "7"))
SLOTS = 3
SECOND_HOST = "ferry-mw-second"
NODES = ("node1", "node2", "node3")
# Running servers move live (128 MiB: the lab's kernel does not boot in 64), stopped ones
# offline (64 MiB, never booted): one of each kind per node, and two more stopped ones.
LIVE = {"mw-live-1": "node1", "mw-live-2": "node2", "mw-live-3": "node3"}
OFFLINE = {"mw-off-1": "node1", "mw-off-2": "node2", "mw-off-3": "node3", "mw-off-4": "node1",
           "mw-off-5": "node2"}
SLOW_MBIT = 8  # ~1 MB/s: a copy of the 16 MiB seed stays in flight long enough to cancel it
REFUSED_FOR_SLOTS = f"{SLOTS} migration groups are already running"


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request, tmp_path):
    """Once on PostgreSQL, once on one SQLite file that every process opens."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ferry.sqlite'}"
    return request.getfixturevalue("postgres_url")


def placement(lab):
    """{server name: {node: state}} for this test's servers, from libvirt on every node."""
    found = {}
    for domain in lab.servers():
        if domain["name"] in LIVE or domain["name"] in OFFLINE:
            found.setdefault(domain["name"], {})[domain["node"]] = domain["state"]
    return found


def in_flight(row, mode):
    """True while a task copies data: libvirt's job with progress (live), the NBD copy (offline)."""
    if row["status"] != status.MIGRATION_RUNNING:
        return False
    if mode == status.MODE_LIVE:
        return row["phase"] == "migrate" and bool((row["progress"] or {}).get("data_processed"))
    return row["phase"] == "copy"


class Groups:
    """Starts groups through the service from a seeded draw and remembers what became of them."""

    def __init__(self, app, lab, fleet, rng):
        self.app, self.lab, self.fleet, self.rng = app, lab, fleet, rng
        self.accepted, self.refused = [], []  # dicts: group, tasks, servers, destination, live
        self.held = set()  # servers the canceller still has to look at: not drawn meanwhile

    def idle(self):
        """{server name: node} of this test's servers no unfinished task is moving."""
        with self.app.app_context():
            busy = set(db.session.scalars(db.select(MigrationTask.server_id).where(
                MigrationTask.status.in_(status.MIGRATION_ACTIVE))))
            return {s.name: s.compute_resource.name for s in db.session.scalars(db.select(Server))
                    if s.id not in busy and s.name not in self.held
                    and (s.name in LIVE or s.name in OFFLINE)}

    def draw(self):
        """(server names, destination, live) of idle servers of one state, or None."""
        idle = self.idle()
        live = self.rng.random() < 0.5
        to = self.rng.choice(NODES)
        for kind in (live, not live):
            names = sorted(n for n, node in idle.items()
                           if (n in LIVE) == kind and node != to)
            if names:
                count = min(len(names), self.rng.choice((1, 2)))
                return self.rng.sample(names, count), to, kind
        return None

    def attempt(self):
        """Start one drawn group (enqueued through the outbox); True accepted, False refused,
        None when no server was idle."""
        drawn = self.draw()
        if drawn is None:
            return None
        names, to, live = drawn
        before = placement(self.lab)
        with self.app.app_context():
            group = migration.start_group(make_request(self.app, self.fleet, names, to, live=live))
            record = {"group": group.id, "tasks": [t.id for t in group.tasks], "servers": names,
                      "destination": to, "live": live, "status": group.status,
                      "errors": [t.error for t in group.tasks]}
        if record["status"] == status.MIGRATION_RUNNING:
            self.accepted.append(record)
            return True
        assert all(REFUSED_FOR_SLOTS in (e or "") for e in record["errors"]), record
        self.refused.append(record)
        # A refused group moved nothing: no journal, never started, its servers where they were.
        with self.app.app_context():
            assert not db.session.scalar(db.select(db.func.count(MigrationStep.id)).where(
                MigrationStep.task_id.in_(record["tasks"])))
            assert all(db.session.get(MigrationTask, t).started_at is None
                       for t in record["tasks"])
        after = placement(self.lab)
        assert {n: after.get(n) for n in names} == {n: before.get(n) for n in names}, record
        return False

    def slots_held(self):
        with self.app.app_context():
            return len(limits.holders(limits.GROUP))


class Canceller(threading.Thread):
    """Cancels two tasks while they copy data, slowing their destination's link meanwhile.

    The main loop offers tasks; a designated one that ended before a cancel could land (or
    whose cancel came too late) makes the next offered task a candidate too.
    """

    def __init__(self, app, lab, shaped_link, groups, wanted=2):
        super().__init__(daemon=True, name="canceller")
        self.app, self.lab, self.shape, self.groups = app, lab, shaped_link, groups
        self.wanted = wanted
        self.watching = []  # (task id, mode, server, source, destination)
        self.done = []  # what happened to each cancel request
        self.missed = self.extras = 0
        self.stop = threading.Event()
        self.error = None
        self.lock = threading.Lock()

    def offer(self, record, designated):
        """Watch the group's first task if it was designated or a cancel has been missed."""
        with self.lock:
            extra = not designated and self.missed > self.extras
            if len(self.cancelled()) >= self.wanted or not (designated or extra):
                return
            self.extras += extra
            row = task_row(self.app, record["tasks"][0])
            self.groups.held.add(row["server"])
            self.watching.append({"task": record["tasks"][0], "server": row["server"],
                                  "mode": status.MODE_LIVE if record["live"] else
                                  status.MODE_OFFLINE})

    def cancelled(self):
        return [d for d in self.done if d["cancelled"]]

    def run(self):
        try:
            while not self.stop.is_set() and len(self.cancelled()) < self.wanted:
                for watch in list(self.watching):
                    row = task_row(self.app, watch["task"])
                    if row["status"] in status.MIGRATION_DONE:  # ran and ended between polls
                        self._forget(watch, dict(watch, cancelled=False, status=row["status"]))
                    elif row["status"] == status.MIGRATION_RUNNING:
                        self._cancel(watch, row)
                time.sleep(0.2)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            self.error = exc

    def _forget(self, watch, outcome):
        with self.lock:
            self.watching.remove(watch)
            self.done.append(outcome)
            if not outcome["cancelled"]:
                self.missed += 1
        self.groups.held.discard(watch["server"])

    def _cancel(self, watch, row):
        """Slow the running task's destination, cancel it mid-copy, check its server stayed."""
        task_id, destination = watch["task"], row["destination"]
        self.shape(destination, SLOW_MBIT)
        try:
            seen = wait_until(lambda: self._row_if(task_id, lambda r: in_flight(r, watch["mode"])),
                              180, f"task {task_id} to copy data")
            if seen["status"] == status.MIGRATION_RUNNING:
                with self.app.app_context():
                    migration.request_cancel(task_id)
            ended = wait_until(lambda: self._row_if(task_id, lambda r: False), 300,
                               f"cancelled task {task_id} to end")
        finally:
            self.shape(destination, "off")
        outcome = dict(watch, phase=seen["phase"], status=ended["status"], source=row["source"],
                       destination=destination,
                       cancelled=ended["status"] == status.MIGRATION_CANCELLED,
                       placed=placement(self.lab).get(row["server"]),
                       destination_files=sorted(f for f in images(self.lab, destination)
                                                if row["server"] in f))
        self._forget(watch, outcome)

    def _row_if(self, task_id, wanted):
        """The task's row once wanted(row) holds or the task ended, else None."""
        row = task_row(self.app, task_id)
        return row if wanted(row) or row["status"] in status.MIGRATION_DONE else None


def start_workers(workers, worker_redis):
    """Two workers on this machine and two posing as a second one; all four registered."""
    settings = {"max_parallel_groups": SLOTS, "tasks_per_resource": 1}
    workers.start(2, schedule=True, **settings)
    for index in (1, 2):
        workers.start(1, schedule=True, worker_host=SECOND_HOST,
                      worker_name=f"mw-second-{index}", **settings)
    wait_until(lambda: len(Worker.all(connection=worker_redis)) == 4, 120,
               lambda: "4 workers registered\n" + workers.logs())
    names = {w.name for w in Worker.all(connection=worker_redis)}
    assert {"mw-second-1", "mw-second-2"} <= names, names


def export_listeners(lab):
    """{node: [ports]} of anything listening in the export port range on the nodes."""
    last = limits.EXPORT_PORT_FIRST + limits.EXPORT_PORT_COUNT - 1
    found = {}
    for node in NODES:
        for line in lab.exec(node, "ss", "-ltnH", check=True).stdout.splitlines():
            port = int(line.split()[3].rsplit(":", 1)[1])
            if limits.EXPORT_PORT_FIRST <= port <= last:
                found.setdefault(node, []).append(port)
    return found


def story(task):
    """A task's status, journal and timeline, for an assertion's message."""
    return {"task": task.id, "server": task.server.name, "status": task.status,
            "route": f"{task.source.name}->{task.destination.name}", "error": task.error,
            "started": str(task.started_at), "finished": str(task.finished_at),
            "journal": [(s.seq, s.name, s.status, s.owner, str(s.started_at), s.names, s.error)
                        for s in task.steps],
            "events": [(str(e.at), e.kind, e.message) for e in task.events]}


def overlaps(a, b):
    """True when two [started_at, finished_at] intervals overlap."""
    return a[0] < b[1] and b[0] < a[1]


def most_at_once(intervals):
    """The largest number of [start, end] intervals open at one instant."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals],
                   key=lambda edge: (edge[0], edge[1]))
    now = peak = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def test_it_runs_overlapping_groups_on_four_workers_each_task_once(
        app, lab, lab_server, fleet, workers, worker_redis, shaped_link):
    assert GROUPS >= 4, "FERRY_MANY_WORKERS_GROUPS must be at least 4"
    began = time.monotonic()
    app.config.update(MAX_PARALLEL_GROUPS=SLOTS, TASKS_PER_RESOURCE=1)
    rng = random.Random(SEED)
    guests = {name: lab_server(node, name, memory=128) for name, node in LIVE.items()}
    for name, node in OFFLINE.items():
        lab_server(node, name, memory=64, stopped=True)
    for guest in guests.values():
        lab.wait_for_guest(guest["ip"], 120)
    sync(app, fleet)
    # Nothing from an earlier run may hold an export port (it would fail every export there).
    assert export_listeners(lab) == {}, export_listeners(lab)
    initial = placement(lab)
    assert initial == {**{n: {node: "running"} for n, node in LIVE.items()},
                       **{n: {node: "shut off"} for n, node in OFFLINE.items()}}, initial

    groups = Groups(app, lab, fleet, rng)
    # Three groups take the three slots before any worker runs them: a fourth is refused.
    while len(groups.accepted) < SLOTS:
        assert groups.attempt() in (True, None), groups.accepted
    while (fourth := groups.attempt()) is None:
        pass
    assert fourth is False, groups.accepted

    designated = set(rng.sample(range(GROUPS - 2), 2))
    canceller = Canceller(app, lab, shaped_link, groups)
    for index, record in enumerate(groups.accepted):
        canceller.offer(record, index in designated)
    start_workers(workers, worker_redis)
    canceller.start()
    try:
        tried_full = True  # the fourth above
        while len(groups.accepted) < GROUPS:
            assert canceller.error is None, canceller.error
            if tried_full and groups.slots_held() >= SLOTS:
                time.sleep(1)  # one refused try per full house is enough
                continue
            outcome = groups.attempt()
            if outcome is None:
                time.sleep(1)
            elif outcome:
                canceller.offer(groups.accepted[-1], len(groups.accepted) - 1 in designated)
                tried_full = False
            else:
                tried_full = True
        task_ids = [t for record in groups.accepted for t in record["tasks"]]

        def all_ended():
            with app.app_context():
                db.session.expire_all()
                return all(db.session.get(MigrationGroup, r["group"]).status
                           in status.MIGRATION_DONE for r in groups.accepted)
        wait_until(all_ended, 900, lambda: "every group to end\n" + workers.logs())
        canceller.join(60)
        assert canceller.error is None, canceller.error
    finally:
        canceller.stop.set()
    elapsed = time.monotonic() - began

    # Two tasks were cancelled while they copied, and each left its server on its source.
    cancelled = canceller.cancelled()
    assert len(cancelled) == 2, canceller.done
    for done in cancelled:
        state = "running" if done["mode"] == status.MODE_LIVE else "shut off"
        assert done["placed"] == {done["source"]: state}, done
        assert done["destination_files"] == [], done

    with app.app_context():
        db.session.expire_all()
        tasks = {t: db.session.get(MigrationTask, t) for t in task_ids}
        # Every task and group ended; those not cancelled moved their server.
        for record in groups.accepted:
            assert db.session.get(MigrationGroup, record["group"]).status in status.MIGRATION_DONE
        cancelled_ids = {d["task"] for d in cancelled}
        # No export lost its port to a concurrent preflight's probe: the probe claims the
        # port it listens on (limits.claim_probe_port), so a copy starting meanwhile takes
        # another. Before, such a copy could not bind and failed, its server on the source.
        for task in tasks.values():
            expected = (status.MIGRATION_CANCELLED if task.id in cancelled_ids else
                        status.MIGRATION_FINISHED)
            assert task.status == expected, story(task)

        # No task ran twice: one owner wrote every step of a task, each step once; one owner
        # ran all of a group's tasks, and one job did (any other job for it left it alone).
        owners = {}
        for record in groups.accepted:
            group_owners = set()
            for task_id in record["tasks"]:
                steps = tasks[task_id].steps
                names = [s.name for s in steps]
                assert len(names) == len(set(names)), story(tasks[task_id])
                assert len({s.owner for s in steps}) == 1, story(tasks[task_id])
                assert None not in {s.owner for s in steps}, story(tasks[task_id])
                assert status.STEP_ATTENTION not in {s.status for s in steps}, story(
                    tasks[task_id])
                group_owners |= {s.owner for s in steps}
            assert len(group_owners) <= 1, (record, group_owners)
            group_jobs = [j for j in db.session.scalars(db.select(Job).where(
                Job.name == "run_group")) if (j.args or {}).get("group_id") == record["group"]]
            acted = [j for j in group_jobs if not (j.result or {}).get("left_alone")]
            assert len(acted) == 1 and acted[0].status == status.JOB_FINISHED, [
                (j.id, j.status, j.result, j.error) for j in group_jobs]
            owners[record["group"]] = next(iter(group_owners), None)

        # No two tasks that share a node ran at the same time (their recorded intervals).
        ran = [t for t in tasks.values() if t.started_at is not None]
        for a in ran:
            for b in ran:
                shared = {a.source_id, a.destination_id} & {b.source_id, b.destination_id}
                if a.id < b.id and shared:
                    assert not overlaps((a.started_at, a.finished_at),
                                        (b.started_at, b.finished_at)), (story(a), story(b))
        # Never more than three groups running at once.
        spans = [(g.started_at, g.finished_at) for g in (
            db.session.get(MigrationGroup, r["group"]) for r in groups.accepted)]
        assert most_at_once(spans) <= SLOTS, spans
        assert db.session.scalars(db.select(Claim)).all() == []

        # Every server on exactly one node, in the state it had, where the inventory says.
        where_now = placement(lab)
        inventory = {s.name: s.compute_resource.name for s in db.session.scalars(
            db.select(Server)) if s.name in where_now}
        summary = {"groups": len(groups.accepted), "tasks": len(tasks),
                   "refused": len(groups.refused),
                   "moved": sum(t.status == status.MIGRATION_FINISHED for t in tasks.values()),
                   "cancelled": [(d["task"], d["mode"], d["phase"]) for d in cancelled],
                   "owner_hosts": sorted({o.split(":")[0] for o in owners.values() if o})}
    files = {node: images(lab, node) for node in NODES}
    for name, before in initial.items():
        assert len(where_now.get(name, {})) == 1, (name, where_now.get(name))
        node, state = next(iter(where_now[name].items()))
        assert state == next(iter(before.values())), (name, where_now[name])
        assert inventory[name] == node, (name, inventory[name], node)
        # Its one disk is there, and no copy, temporary file or leftover of it anywhere else.
        for other in NODES:
            mine = {f for f in files[other] if name in f}
            assert len(mine) == (1 if other == node else 0), (name, other, mine)
    # No export (qemu-nbd) is left serving on any node.
    assert export_listeners(lab) == {}, export_listeners(lab)
    for guest in guests.values():
        assert lab.wait_for_guest(guest["ip"], 60)["seed_md5_ok"] is True
    note("many-workers", database=app.config["SQLALCHEMY_DATABASE_URI"].split(":")[0],
         seconds=round(elapsed), **summary)

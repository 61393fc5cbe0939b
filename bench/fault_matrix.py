"""`python -m bench.fault_matrix [--short] [--only TEXT]`: a fault at every step boundary.

For every boundary of a live move and of an offline move with conversion (file-qcow2 to
file-raw), before and after each journaled step, each of four faults:

- worker-kill: the worker SIGKILLs itself there (FERRY_DIE_AT, app/services/journal.py); the
  harness kills what is left of it (its main process) and starts a fresh worker;
- source-libvirtd-kill, destination-libvirtd-kill: the worker pauses there (FERRY_PAUSE_AT),
  the node's libvirtd is SIGKILLed, the worker is released, libvirtd starts again HOLD_S later;
- link-cut: likewise with the destination's link cut for LINK_DOWN_S.

At live:before:migrate the worker is released first and the fault (a worker kill too) lands
once libvirt's job runs (mid-copy, on a shaped link): that is when recovery must adopt it. Workers run with FERRY_ORPHAN_AFTER / FERRY_LEASE_TTL of
ORPHAN_AFTER seconds and their recovery pass every tick. Once the task and its group ended
(or SETTLE_LIMIT_S passed), from libvirt on every node:

- the server is defined on exactly one node, running iff it was before (live: running,
  offline: shut off), its disk content unchanged (the guest's own seed md5 when running,
  `qemu-img compare` with the image it was made from when stopped);
- no name the task's journal says it created (paths, directories, NBD and copy processes)
  is left on any node, other than the disks the server's definition uses there;
- the task and its group ended, with the truth (finished iff on the destination; needs
  attention counts as a failure of the engine), within BUDGET_S of the fault;
- no claim is held for the task or the group (node, server, port, group slot).

Results: bench/results/fault-matrix.md and .json (--short: fault-matrix-short.*). The
database is FERRY_MATRIX_DATABASE_URL (emptied), Redis FERRY_MATRIX_REDIS_URL (a db of its
own: it is flushed), the lab FERRY_LAB_NAME / FERRY_LAB_NET.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass

from redis import Redis

from app import status
from app.extensions import db
from app.models import Claim, MigrationTask
from app.services import limits
from bench import ROOT, report
from bench.stage import DATABASE_URL, bring_up_lab, fresh_database, make_app, register
from bench.workers import Workers
from worker.schedule import TICK_S

LIVE_STEPS = ("prepare-destination-disks", "migrate", "verify-destination", "record-destination",
              "remove-source-leftovers")
OFFLINE_STEPS = ("export", "copy", "verify", "define-destination", "undefine-source",
                 "settle-addresses", "remove-source-disks")
FAULTS = ("worker-kill", "source-libvirtd-kill", "destination-libvirtd-kill", "link-cut")
ORPHAN_AFTER = 10  # the workers' FERRY_ORPHAN_AFTER and FERRY_LEASE_TTL
HOLD_S = 3  # a killed libvirtd stays down this long
LINK_DOWN_S = 5
MIGRATE_RATE_MBIT = 200  # the destination's link while a fault lands mid-migration
REST_S = 60  # what is left of the move after recovery took over (a loaded 2-core machine)
BUDGET_S = ORPHAN_AFTER + 2 * TICK_S + REST_S
SETTLE_LIMIT_S = 240
REACH_LIMIT_S = 180
PREFIX = "fm-"
IMAGES = "/var/lib/libvirt/images"
CONVERT_TO = status.STORAGE_FILE_RAW


@dataclass(frozen=True)
class Case:
    """One fault at one boundary."""

    mode: str
    when: str  # before | after
    step: str
    fault: str

    @property
    def point(self) -> str:
        return f"{self.mode}:{self.when}:{self.step}"

    @property
    def key(self) -> str:
        return f"{self.point} x {self.fault}"


def all_cases() -> list[Case]:
    """Every boundary of both runners times every fault."""
    points = [(status.MODE_LIVE, s) for s in LIVE_STEPS] + [(status.MODE_OFFLINE, s)
                                                            for s in OFFLINE_STEPS]
    return [Case(mode, when, step, fault) for mode, step in points
            for when in ("before", "after") for fault in FAULTS]


# The combinations that matter most, run in `make test` (tests/lab/test_fault_matrix.py).
# Here the worker is released and the fault lands once libvirt's job runs (a worker killed
# before it starts the job leaves what after:prepare-destination-disks leaves).
MID_MIGRATE = "live:before:migrate"

SHORT = (
    Case(status.MODE_LIVE, "before", "migrate", "worker-kill"),  # the job runs on, adopted
    Case(status.MODE_LIVE, "before", "migrate", "destination-libvirtd-kill"),
    Case(status.MODE_LIVE, "before", "migrate", "source-libvirtd-kill"),  # defect 14
    Case(status.MODE_OFFLINE, "before", "copy", "worker-kill"),
    Case(status.MODE_OFFLINE, "after", "define-destination", "worker-kill"),  # two definitions
    Case(status.MODE_OFFLINE, "before", "undefine-source", "worker-kill"),
)


class Rig:
    """The lab, an app on its own database and Redis db, real workers, and the moved servers."""

    def __init__(self, app, lab, fleet, instance: str):
        self.app, self.lab, self.fleet, self.instance = app, lab, fleet, instance
        self.workers = Workers(app.config["SQLALCHEMY_DATABASE_URI"], app.config["REDIS_URL"],
                               instance)
        self.servers: dict[str, dict] = {}
        self.net = lab.node("node1")["address"].rsplit(".", 2)[0] + "."  # e.g. "10.80."
        self.counter = 0

    # -- servers ------------------------------------------------------------------------
    def server(self, mode: str) -> dict:
        """The server a case moves: live, one guest kept running between cases; offline, a
        fresh stopped qcow2 server on node1 each time (the move converts it to raw)."""
        made = self.servers.get(mode)
        if mode == status.MODE_OFFLINE or made is None:
            if made is not None:
                self.lab.rmserver(made["name"])
            self.counter += 1
            name = f"{PREFIX}{mode}-{self.counter}"
            made = self.lab.mkserver("node1", name, memory=128, format="qcow2",
                                     stopped=mode == status.MODE_OFFLINE)
            if mode == status.MODE_LIVE:
                self.lab.wait_for_guest(made["ip"], 180)
            self.servers[mode] = made
        return made

    def where(self, name: str) -> dict:
        """{node: state} of every node that defines a domain of that name."""
        return {s["node"]: s["state"] for s in self.lab.servers() if s["name"] == name}

    def flask(self, *argv, timeout: float = 180) -> str:
        """`flask ARGV` in a process of its own, as a person or a script runs it; its output.

        Its own process, not this one: the preflight keeps node connections in a
        per-process pool, and one kept across a killed libvirtd hung the next preflight
        forever (seen here; reported to the preflight's owner)."""
        proc = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *argv], cwd=ROOT,
                              env=dict(self.workers.env, FERRY_ORPHAN_AFTER=str(ORPHAN_AFTER)),
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode and "migrate" not in argv:
            raise RuntimeError(f"flask {' '.join(argv)} failed: {proc.stderr[-2000:]}")
        return proc.stdout

    def sync(self) -> None:
        """The inventory learns where the servers are now."""
        self.flask("sync")

    # -- one case -----------------------------------------------------------------------
    def run(self, case: Case) -> dict:
        """Run one case and check the invariants; returns its record."""
        t_start = time.monotonic()
        self.restore_nodes()
        server = self.server(case.mode)
        name = server["name"]
        placed = self.where(name)
        source = next(iter(placed))
        destination = "node2" if source == "node1" else "node1"
        record = {**asdict(case), "point": case.point, "server": name,
                  "route": f"{source}->{destination}", "violations": [], "notes": []}
        pause_dir = tempfile.mkdtemp(prefix="pause-", dir=self.instance)
        mid_migrate = case.point == MID_MIGRATE
        hooks = {"test_hooks": 1}
        if case.fault == "worker-kill" and not mid_migrate:
            hooks["die_at"] = case.point
        else:
            hooks.update(pause_at=case.point, pause_dir=pause_dir)
        first = self.start_worker(**hooks)
        self.sync()
        group_id, task_id = self.start(name, destination, case.mode)
        record.update(group=group_id, task=task_id)
        reached = self.wait_reached(case, first, pause_dir, task_id)
        if mid_migrate:  # the worker waits at the boundary: slow the copy it is about to start
            self.lab.cli("link", destination, "rate", str(MIGRATE_RATE_MBIT))
        record["reached"] = reached
        t_fault = time.monotonic()
        if not reached:
            record["notes"].append("the boundary was never reached: the task ended before it")
        else:
            record["injected"] = self.inject(case, first, pause_dir, source, destination, name,
                                             mid_migrate)
            t_fault = time.monotonic()
        if mid_migrate:
            self.lab.cli("link", destination, "rate", "off")
        ended = self.wait_ended(task_id, group_id)
        record["settle_s"] = round(time.monotonic() - t_fault, 1)
        if not ended:
            record["violations"].append(f"the task or group did not end within {SETTLE_LIMIT_S} s")
        elif reached and record["settle_s"] > BUDGET_S:
            record["violations"].append(f"ended {record['settle_s']} s after the fault, over "
                                        f"the {BUDGET_S} s budget")
        self.check(case, record, server, source, destination)
        if not reached:
            record["violations"].append("boundary not reached")
        record["passed"] = not record["violations"]
        record["worker_log"] = self.workers.logs()[-3000:] if not record["passed"] else None
        self.workers.stop()
        self.repair(case, record, server)
        record["seconds"] = round(time.monotonic() - t_start, 1)
        return record

    def start_worker(self, **hooks):
        """One worker with its recovery pass every tick and short leases (plus test hooks)."""
        return self.workers.start(1, schedule=True, orphan_after=ORPHAN_AFTER,
                                  lease_ttl=ORPHAN_AFTER, **hooks)[0]

    def start(self, name: str, to: str, mode: str) -> tuple[int, int]:
        """`flask migrate`: preflight, then the group goes to the worker; (group id, task id)."""
        argv = ["migrate", name, "--to", to, "--json", "--acknowledge-warnings"]
        if mode == status.MODE_OFFLINE:
            argv += ["--offline", "--convert", CONVERT_TO]
        out = self.flask(*argv)
        try:
            outcome = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError) as exc:
            raise RuntimeError(f"flask migrate said: {out[-2000:]}") from exc
        if outcome["status"] not in (status.MIGRATION_RUNNING, status.MIGRATION_FINISHED):
            raise RuntimeError(f"the group did not start: {outcome}")
        return outcome["group"], outcome["tasks"][0]["task"]

    def task(self, task_id: int) -> dict:
        """The task's row and its group's, read fresh."""
        with self.app.app_context():
            db.session.expire_all()
            task = db.session.get(MigrationTask, task_id)
            return {"status": task.status, "phase": task.phase, "error": task.error,
                    "group_status": task.group.status,
                    "events": [(e.kind, e.message) for e in task.events],
                    "steps": [{"name": s.name, "status": s.status, "names": s.names or {}}
                              for s in task.steps]}

    def wait_reached(self, case: Case, worker, pause_dir: str, task_id: int) -> bool:
        """Until the worker died at (worker-kill) or paused at the boundary; False if the task
        ended without reaching it."""
        deadline = time.monotonic() + REACH_LIMIT_S
        while time.monotonic() < deadline:
            if case.fault == "worker-kill" and case.point != MID_MIGRATE:
                with open(worker.log_path) as handle:
                    if f"test hook: dying at {case.point}" in handle.read():
                        return True
            elif os.path.exists(os.path.join(pause_dir, "reached")):
                return True
            if self.task(task_id)["status"] in status.MIGRATION_DONE:
                return False
            time.sleep(0.3)
        return False

    def inject(self, case, worker, pause_dir, source, destination, name, mid_migrate) -> str:
        """The fault, then the node put right (and the worker released or replaced)."""
        release = os.path.join(pause_dir, "release")
        note = ""
        if mid_migrate:
            open(release, "w").close()
            running = self.wait_job(source, name)
            note = " once libvirt's job ran" if running else " (no job seen running)"
        if case.fault == "worker-kill":
            self.workers.kill(worker)  # the work horse, if alive, and the worker: no cleanup runs
            self.start_worker()
            return ("SIGKILL the worker and its work horse" + (note or " (the horse had "
                    "SIGKILLed itself at the boundary)") + "; a fresh worker started")
        node = source if case.fault.startswith("source") else destination
        if case.fault.endswith("libvirtd-kill"):
            self.lab.cli("kill-libvirtd", node)
            open(release, "w").close()
            time.sleep(HOLD_S)
            self.lab.cli("start-libvirtd", node)
            return f"SIGKILL libvirtd on {node}{note}, started again {HOLD_S} s later"
        self.lab.cli("link", destination, "down")
        open(release, "w").close()
        time.sleep(LINK_DOWN_S)
        self.lab.cli("link", destination, "up")
        return f"cut {destination}'s link{note} for {LINK_DOWN_S} s"

    def wait_job(self, node: str, name: str, timeout: float = 30) -> bool:
        """Until libvirt on the node runs a job for the domain (a migration under way)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.lab.exec(node, "virsh", "domjobinfo", name).stdout
            if re.search(r"Job type:\s+Unbounded", out):
                return True
            time.sleep(0.2)
        return False

    def wait_ended(self, task_id: int, group_id: int) -> bool:
        deadline = time.monotonic() + SETTLE_LIMIT_S
        while time.monotonic() < deadline:
            row = self.task(task_id)
            if row["status"] in status.MIGRATION_DONE and \
                    row["group_status"] in status.MIGRATION_DONE:
                return True
            time.sleep(1)
        return False

    # -- the invariants -----------------------------------------------------------------
    def check(self, case, record, server, source, destination) -> None:
        """Every invariant, from libvirt on every node and from the database."""
        bad = record["violations"]
        name = server["name"]
        row = self.task(record["task"])
        record.update(status=row["status"], group_status=row["group_status"], error=row["error"],
                      phase=row["phase"], events=[k for k, _ in row["events"]],
                      steps=[f"{s['name']}:{s['status']}" for s in row["steps"]])
        placed = self.where(name)
        record["where"] = placed
        if len(placed) != 1:
            bad.append(f"defined on {len(placed)} nodes: {placed}")
        holder = next((n for n, st in placed.items() if st == "running"),
                      next(iter(placed), None))
        state = placed.get(holder)
        want = "running" if case.mode == status.MODE_LIVE else "shut off"
        if holder and state != want:
            bad.append(f"{state} on {holder}, should be {want}")
        if holder and not self.disk_intact(case.mode, server, holder, state):
            bad.append(f"disk content changed on {holder}")
        if row["status"] not in status.MIGRATION_DONE:
            bad.append(f"task still {row['status']} ({row['phase']})")
        elif row["status"] == status.MIGRATION_ATTENTION:
            bad.append(f"task needs attention: {row['error']}")
        elif row["status"] == status.MIGRATION_FINISHED and holder != destination:
            bad.append(f"task finished but the server is on {holder}")
        elif row["status"] in (status.MIGRATION_FAILED, status.MIGRATION_CANCELLED) \
                and holder != source:
            bad.append(f"task {row['status']} but the server is on {holder}")
        if row["group_status"] not in status.MIGRATION_DONE:
            bad.append(f"group still {row['group_status']}")
        bad += self.leftovers(row["steps"], holder, source, destination, name)
        with self.app.app_context():
            held = [f"{c.kind}:{c.key}:{c.holder}" for c in db.session.scalars(
                db.select(Claim).where(Claim.holder.in_(
                    (f"task:{record['task']}", f"group:{record['group']}"))))]
        if held:
            bad.append(f"claims still held: {held}")

    def disk_intact(self, mode: str, server: dict, node: str, state: str) -> bool:
        """The guest's own md5 check (running), or a comparison with the image it was made from."""
        if state == "running":
            try:
                return self.lab.wait_for_guest(server["ip"], 60).get("seed_md5_ok") is True
            except AssertionError:
                return False
        from lab import guest
        template = guest.disk_template(guest.build(), 1, server["disk"]["format"])
        compared = self.lab.exec(node, "qemu-img", "compare", "-U", template,
                                 self.disk_paths(node, server["name"])[0])
        return compared.returncode == 0

    def disk_paths(self, node: str, name: str) -> list[str]:
        """The files (disks, NVRAM) the node's definition of the server uses."""
        xml = self.lab.exec(node, "virsh", "dumpxml", "--inactive", name).stdout
        return re.findall(r"<source file='([^']+)'", xml) + re.findall(
            r"<nvram[^>]*>([^<]+)</nvram>", xml)

    def leftovers(self, steps, holder, source, destination, name) -> list[str]:
        """Names the journal says the task created, still present where they should not be."""
        kept = set(self.disk_paths(holder, name)) if holder else set()
        named = {source: set(), destination: set()}
        for entry in steps:
            names = entry["names"]
            node = {"source": source, "source-removal": source,
                    "destination": destination}.get(names.get("node"))
            if node is None:
                continue
            for key in ("paths", "intended", "dirs", "pid_files"):
                named[node].update(p for p in names.get(key) or [] if isinstance(p, str))
        found = []
        for node, paths in named.items():
            paths = sorted(p for p in paths if not (node == holder and p in kept))
            if not paths:
                continue
            present = self.lab.exec(node, "sh", "-c", 'for p; do [ -e "$p" ] && echo "$p"; done',
                                    "sh", *paths).stdout.split()
            # PID files live in /run, which the lab's nodes share with the host and each other.
            present = [p for p in present if not p.startswith("/run/")]
            if present:
                found.append(f"left on {node}: {', '.join(present)}")
        for node in ("node1", "node2", "node3"):
            if node == holder:
                continue
            listing = self.lab.exec(node, "ls", "-A", IMAGES).stdout.split()
            stray = [f for f in listing if f.startswith(name + ".")]
            if stray:
                found.append(f"files of {name} on {node}: {', '.join(stray)}")
        procs = [line for line in _ps() if ("qemu-nbd" in line or "qemu-img" in line)
                 and self.net in line]
        if procs:
            found.append(f"copy or export processes still running: {procs}")
        return found

    # -- between cases ------------------------------------------------------------------
    def restore_nodes(self) -> None:
        """Every node's libvirtd running, links up and unshaped."""
        for node in ("node1", "node2", "node3"):
            self.lab.cli("start-libvirtd", node, check=False)
            self.lab.cli("link", node, "up", check=False)
            self.lab.cli("link", node, "rate", "off", check=False)

    def repair(self, case, record, server) -> None:
        """Put things right for the next case, saying what was done."""
        done = record.setdefault("repairs", [])
        with self.app.app_context():
            task = db.session.get(MigrationTask, record["task"])
            if task.status not in status.MIGRATION_DONE:
                task.status, task.error = status.MIGRATION_FAILED, "closed by the fault matrix"
                done.append("task closed by hand")
            if task.group.status not in status.MIGRATION_DONE:
                task.group.status = status.MIGRATION_FAILED
                done.append("group closed by hand")
            db.session.commit()
            limits.release_resources(task.id)
            limits.release_group_slot(task.group_id)
        placed = self.where(server["name"])
        healthy = len(placed) == 1 and not any(v.startswith(("disk", "defined"))
                                               for v in record["violations"])
        if case.mode == status.MODE_LIVE and healthy:
            node, state = next(iter(placed.items()))
            if state != "running":
                self.lab.exec(node, "virsh", "start", server["name"])
                done.append(f"started {server['name']} on {node}")
            for other in ("node1", "node2", "node3"):
                if other != node:
                    self.lab.exec(other, "sh", "-c", f"rm -f {IMAGES}/{server['name']}.*")
        elif case.mode == status.MODE_LIVE:
            self.lab.rmserver(server["name"])
            self.servers.pop(case.mode, None)
            done.append(f"removed {server['name']}: a new live server is made")

    def close(self) -> None:
        """Stop the workers, remove the servers, put the nodes right."""
        self.workers.stop()
        for made in self.servers.values():
            with contextlib.suppress(Exception):
                self.lab.rmserver(made["name"])
        with contextlib.suppress(Exception):
            self.restore_nodes()


def _ps() -> list[str]:
    return subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()


def select(short: bool, only: str | None) -> list[Case]:
    """The cases of this run: with `only`, those whose key contains one of its comma-separated
    parts."""
    cases = list(SHORT) if short else all_cases()
    if only:
        parts = [p.strip() for p in only.split(",") if p.strip()]
        cases = [c for c in cases if any(p in c.key for p in parts)]
    return cases


def merge_earlier(document: dict) -> None:
    """A run of some cases (--only) keeps the earlier full document's other cases, in matrix
    order, and says which run measured which (`runs`)."""
    path = os.path.join(report.RESULTS, "fault-matrix.json")
    if not os.path.exists(path):
        return
    with open(path) as handle:
        earlier = json.load(handle)
    mine = {c["point"] + " x " + c["fault"] for c in document["cases"]}
    kept = [c for c in earlier.get("cases", []) if c["point"] + " x " + c["fault"] not in mine]
    order = {c.key: i for i, c in enumerate(all_cases())}
    for case in kept:
        case.setdefault("run", earlier.get("started_at"))
    for case in document["cases"]:
        case["run"] = document["started_at"]
    document["cases"] = sorted(kept + document["cases"],
                               key=lambda c: order.get(c["point"] + " x " + c["fault"], 0))
    document["runs"] = (earlier.get("runs") or [{"started_at": earlier.get("started_at"),
                                                 "only": earlier.get("only")}]) + [
        {"started_at": document["started_at"], "only": document.get("only")}]


def main(argv=None) -> int:
    """Run the matrix (or its short subset) and write the results."""
    parser = argparse.ArgumentParser(prog="python -m bench.fault_matrix", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help=f"the {len(SHORT)} cases of make test")
    parser.add_argument("--only", help="run the cases whose 'mode:when:step x fault' contains "
                        "this (comma-separated: any of these); merged into the last full results")
    args = parser.parse_args(argv)
    report.exit_cleanly_on_sigterm()
    cases = select(args.short, args.only)
    database_url = os.environ.get("FERRY_MATRIX_DATABASE_URL", DATABASE_URL + "_matrix")
    redis_url = os.environ.get("FERRY_MATRIX_REDIS_URL", "redis://127.0.0.1:6379/12")
    t0 = time.monotonic()
    document = {"mode": "short" if args.short else "full", "only": args.only,
                "planned": len(cases), "started_at": report.stamp(),
                "machine_at_start": report.machine(),
                "settings": {"orphan_after_s": ORPHAN_AFTER, "lease_ttl_s": ORPHAN_AFTER,
                             "tick_s": TICK_S, "budget_s": BUDGET_S, "hold_s": HOLD_S,
                             "link_down_s": LINK_DOWN_S, "convert_to": CONVERT_TO},
                "cases": [], "errors": []}
    rig = None
    try:
        Redis.from_url(redis_url).flushdb()
        fresh_database(database_url)
        instance = tempfile.mkdtemp(prefix="ferry-matrix-")
        app = make_app(database_url, instance, REDIS_URL=redis_url, ORPHAN_AFTER=ORPHAN_AFTER,
                       LEASE_TTL=ORPHAN_AFTER)
        lab = bring_up_lab(3)
        rig = Rig(app, lab, register(app, lab), instance)
        for index, case in enumerate(cases):
            print(f"fault-matrix: {index + 1}/{len(cases)} {case.key} ...", file=sys.stderr,
                  flush=True)
            try:
                record = rig.run(case)
            except Exception:  # noqa: BLE001 - record it, go on with the next case
                record = {**asdict(case), "point": case.point, "passed": False,
                          "violations": ["harness error"], "harness_error": traceback.format_exc()}
                print(record["harness_error"], file=sys.stderr)
                rig.workers.stop()
                with contextlib.suppress(Exception):
                    rig.restore_nodes()
            document["cases"].append(record)
            print(f"fault-matrix:   {'pass' if record['passed'] else record['violations']}",
                  file=sys.stderr, flush=True)
    except Exception:  # noqa: BLE001 - whatever broke is in the results
        document["errors"].append(traceback.format_exc())
        print(document["errors"][-1], file=sys.stderr)
    except (KeyboardInterrupt, SystemExit):
        document["errors"].append(f"interrupted after {len(document['cases'])} cases")
    finally:
        if rig is not None:
            rig.close()
    if args.only and not args.short:
        merge_earlier(document)
    cases_done = document["cases"]
    document["summary"] = {"cases": len(cases_done),
                           "passed": sum(1 for c in cases_done if c["passed"]),
                           "failed": [c["point"] + " x " + c["fault"] for c in cases_done
                                      if not c["passed"]]}
    code = report.finish("fault-matrix", args.short, document, t0, markdown)
    return code or (1 if document["summary"]["failed"] else 0)


def markdown(doc: dict) -> str:
    """The matrix as a table: point x fault -> outcome, pass/fail, seconds."""
    s = doc["summary"]
    lines = [f"# Ferry fault matrix ({doc['mode']} run)", "",
             f"Started {doc['started_at']}, took {doc['duration_s']} s (load average at start "
             f"{doc['machine_at_start']['loadavg'][0]}). Workers: ORPHAN_AFTER and lease TTL "
             f"{doc['settings']['orphan_after_s']} s, recovery every {doc['settings']['tick_s']} s; "
             f"a task must end within {doc['settings']['budget_s']} s of the fault.", "",
             f"**{s['cases']} cases, {s['passed']} passed every check.**"
             + (f" This run: the cases matching `{doc['only']}` ({doc['planned']} of "
                f"{len(all_cases())}); the others come from earlier runs (`run` in the JSON):"
                + "".join(f" {r['started_at']} ({r['only'] or 'all'})" for r in doc["runs"])
                if doc.get("runs") else (f" Only the cases matching `{doc['only']}` were run."
                                          if doc.get("only") else "")), "",
             "| Boundary | Fault | Route | Outcome | Where | Result | Settled (s) | Case (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for c in doc["cases"]:
        where = ", ".join(f"{n} {st}" for n, st in (c.get("where") or {}).items()) or "-"
        result = "pass" if c["passed"] else "**FAIL**: " + "; ".join(c["violations"])[:300]
        lines.append(f"| {c['point']} | {c['fault']} | {c.get('route', '-')} | "
                     f"{c.get('status', '-')} | {where} | "
                     f"{result.replace('|', '/')} | {c.get('settle_s', '-')} | "
                     f"{c.get('seconds', '-')} |")
    for error in doc["errors"]:
        lines += ["", f"**The run broke:** `{error.strip().splitlines()[-1]}`"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

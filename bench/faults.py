"""`python -m bench.faults [--quick] [--seed N]`: break things in the middle of migrations.

At seeded random points of live and offline migrations, one fault each: SIGKILL the worker,
kill the web app, restart Redis, restart or kill the source's or the destination's libvirtd,
cut and restore the destination's link. The migration is started the way a person or a
script starts it: by another process (`flask migrate`, the same service call the API makes)
that hands it to a real `python -m worker` on a Redis of the suite's own (never the shared
one on 6379); the web app is gunicorn. A supervisor restarts whatever was killed after a
second, as systemd would. After each injection the suite waits for the task to settle and
checks, against libvirt on every node:

- the server is defined on exactly one node (else: lost),
- its disk is intact: the guest's own seed md5 for a running one, `qemu-img compare` with
  the image it was made from for a stopped one (else: lost),
- it runs if and only if it should (live: running, offline: shut off),
- its task ended and says the truth: finished on the destination, failed or cancelled on
  the source, and the inventory agrees; a task that never ends or needs a person fails this,
- nothing of it is left on the other node.

Then it puts things right for the next injection (and says so). Also: hypothesis fuzzes the
webhook and the API (bench/fuzz.py). Results: bench/results/faults.json and faults.md
(--quick: faults-short.*, not kept).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback

from app import status
from app.extensions import db
from app.models import MigrationGroup, MigrationTask, Server
from app.services import limits, recovery
from bench import ROOT, fuzz, report
from bench.scale import free_port
from bench.stage import (BENCH_SECRET_KEY, DATABASE_URL, PREFIX, bring_up_lab, fresh_database,
                         make_app, register, remove_leftover_servers)
from bench.workers import Workers
from tests.fixtures.fleet import images, sync, where

FAULTS = ("worker-kill", "web-kill", "redis-restart", "source-libvirtd-restart",
          "source-libvirtd-kill", "destination-libvirtd-restart", "destination-libvirtd-kill",
          "link-cut")
MODES = (status.MODE_LIVE, status.MODE_OFFLINE)
# Injection points are drawn uniformly from the start of the call to about the end of a
# typical move on the lab (process start, preflight, the move itself), per mode.
WINDOW_S = {status.MODE_LIVE: 9.0, status.MODE_OFFLINE: 8.0}
SETTLE_S = 45  # orphan detection (10 s here) + recovery's wait for a p2p job + the move
ORPHAN_AFTER = 10
FAULTS_DB = DATABASE_URL + "_faults"
QUICK_PLAN = [("worker-kill", status.MODE_LIVE), ("destination-libvirtd-restart", status.MODE_OFFLINE),
              ("link-cut", status.MODE_LIVE), ("redis-restart", status.MODE_OFFLINE)]


class Daemon:
    """A process of the suite's own (Redis, gunicorn) that a fault may kill and restart."""

    def __init__(self, name: str, argv: list[str], env: dict, log_dir: str, ready):
        self.name, self.argv, self.env, self.ready = name, argv, env, ready
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self.proc = None

    def start(self) -> None:
        """Start it and wait until ready() says it serves (and it is ours that does)."""
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not self.ready() or self.proc.poll() is not None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start: see {self.log_path}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL its process group (a crash: the master and its workers at once)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()


def _answers(cmd: list[str]):
    return lambda: subprocess.run(cmd, capture_output=True).returncode == 0


class Suite:
    """The lab, the suite's own Redis, web app and worker, and the two servers it moves."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.lab = bring_up_lab(3)
        remove_leftover_servers(self.lab)
        fresh_database(FAULTS_DB)
        self.instance = tempfile.mkdtemp(prefix="ferry-faults-")
        # Ports of the suite's own: several suites (make test, make faults) may run at once.
        redis_port = int(os.environ.get("FERRY_FAULTS_REDIS_PORT") or free_port())
        web_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
        self.app = make_app(FAULTS_DB, self.instance, REDIS_URL=self.redis_url,
                            ORPHAN_AFTER=ORPHAN_AFTER)
        self.fleet = register(self.app, self.lab)
        self.env = dict(os.environ, FERRY_DATABASE_URL=FAULTS_DB, FERRY_REDIS_URL=self.redis_url,
                        FERRY_INSTANCE_PATH=self.instance, FERRY_SECRET_KEY=BENCH_SECRET_KEY,
                        FERRY_SYNC_INTERVAL="0", FERRY_ORPHAN_AFTER=str(ORPHAN_AFTER))
        self.redis = Daemon("redis", ["redis-server", "--port", str(redis_port), "--bind",
                                      "127.0.0.1", "--save", "", "--appendonly", "no"],
                            self.env, self.instance,
                            _answers(["redis-cli", "-p", str(redis_port), "ping"]))
        self.web = Daemon("web", [os.path.join(os.path.dirname(sys.executable), "gunicorn"),
                                  "-w", "2", "-b", f"127.0.0.1:{web_port}", "wsgi:app"],
                          self.env, self.instance,
                          _answers(["curl", "-sf", "-o", "/dev/null",
                                    f"http://127.0.0.1:{web_port}/login"]))
        self.redis.start()
        self.web.start()
        self.workers = Workers(FAULTS_DB, self.redis_url, self.instance)
        self.worker = self.workers.start(1, orphan_after=ORPHAN_AFTER)[0]
        self.servers = {}
        self.template = {}
        self.counter = itertools.count()
        for mode in MODES:
            self.new_server(mode)

    # -- servers --------------------------------------------------------------------
    def new_server(self, mode: str) -> dict:
        """(Re)make the server this mode moves, on node1."""
        name = f"{PREFIX}flt-{mode}-{next(self.counter)}"
        made = self.lab.mkserver("node1", name, memory=128, stopped=mode == status.MODE_OFFLINE)
        if mode == status.MODE_LIVE:
            self.lab.wait_for_guest(made["ip"], 120)
        else:
            from lab import guest
            self.template[name] = guest.disk_template(guest.build(), 1, made["disk"]["format"])
        self.servers[mode] = made
        sync(self.app, self.fleet)
        return made

    # -- processes ------------------------------------------------------------------
    def supervise(self) -> list[str]:
        """Restart whatever is not running (a second later, as a supervisor would)."""
        restarted = []
        if self.worker.poll() is not None:
            time.sleep(1)
            self.worker = self.workers.start(1, orphan_after=ORPHAN_AFTER)[0]
            restarted.append("worker")
        for daemon in (self.redis, self.web):
            if daemon.proc.poll() is not None:
                time.sleep(1)
                daemon.start()
                restarted.append(daemon.name)
        return restarted

    def start_migration(self, name: str, destination: str, mode: str):
        """`flask migrate` in its own process: preflight, then the group goes to the worker."""
        argv = [sys.executable, "-m", "flask", "--app", "wsgi", "migrate", name, "--to",
                destination, "--json", "--acknowledge-warnings"]
        if mode == status.MODE_OFFLINE:
            argv.append("--offline")
        with open(os.path.join(self.instance, "starter.log"), "w") as log:
            return subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def inject(self, fault: str, source: str, destination: str, starter) -> str:
        """Carry out one fault; returns what was done."""
        lab = self.lab
        if fault == "worker-kill":
            self.workers.kill(self.worker)
            return f"SIGKILL worker {self.worker.pid} and its work horse"
        if fault == "web-kill":
            self.web.kill()
            note = "SIGKILL gunicorn (master and workers)"
            if starter.poll() is None:  # the request that is starting the migration dies too
                os.killpg(starter.pid, signal.SIGKILL)
                note += " and the in-flight `flask migrate` request"
            return note
        if fault == "redis-restart":
            self.redis.stop()
            self.redis.start()
            return "restarted Redis (no persistence: queued jobs are gone)"
        node = source if fault.startswith("source") else destination
        if fault.endswith("libvirtd-restart"):
            lab.cli("restart-libvirtd", node)
            return f"restarted libvirtd on {node}"
        if fault.endswith("libvirtd-kill"):
            lab.cli("kill-libvirtd", node)
            time.sleep(2)
            lab.cli("start-libvirtd", node)
            return f"SIGKILL libvirtd on {node}, started again 2 s later"
        if fault == "link-cut":
            down = round(self.rng.uniform(2, 6), 1)
            lab.cli("link", destination, "down")
            time.sleep(down)
            lab.cli("link", destination, "up")
            return f"cut {destination}'s link for {down} s"
        raise ValueError(fault)

    # -- one injection --------------------------------------------------------------
    def tasks_since(self, server_name: str, after_id: int) -> list[dict]:
        """The tasks of this server created after after_id, read fresh."""
        with self.app.app_context():
            db.session.expire_all()
            rows = db.session.scalars(db.select(MigrationTask).join(Server).where(
                Server.name == server_name, MigrationTask.id > after_id)
                .order_by(MigrationTask.id)).all()
            return [{"id": t.id, "status": t.status, "phase": t.phase, "error": t.error,
                     "source": t.source.name, "destination": t.destination.name,
                     "group": t.group_id} for t in rows]

    def last_task_id(self) -> int:
        with self.app.app_context():
            return db.session.scalar(db.select(db.func.max(MigrationTask.id))) or 0

    def run_one(self, index: int, fault: str, mode: str) -> dict:
        """Start a migration, inject the fault at a random point, settle, check, repair."""
        server = self.servers[mode]
        name = server["name"]
        place = where(self.lab, name)
        source = next(iter(place))
        destination = "node2" if source == "node1" else "node1"
        delay = round(self.rng.uniform(0, WINDOW_S[mode]), 2)
        before = self.last_task_id()
        entry = {"index": index, "fault": fault, "mode": mode, "server": name,
                 "route": f"{source}->{destination}", "delay_s": delay}
        starter = self.start_migration(name, destination, mode)
        time.sleep(delay)
        seen = self.tasks_since(name, before)
        entry["at_injection"] = ({k: seen[-1][k] for k in ("status", "phase")} if seen
                                 else {"status": "not created yet" if starter.poll() is None
                                       else "starter ended", "phase": None})
        entry["injected"] = self.inject(fault, source, destination, starter)
        entry["settle_s"], entry["restarted"] = self.settle(name, before, starter)
        with open(os.path.join(self.instance, "starter.log")) as log:
            entry["starter"] = {"exit": starter.returncode, "output": log.read()[-300:]}
        entry["tasks"] = self.tasks_since(name, before)
        entry["violations"], entry["lost"] = self.check(mode, server, entry["tasks"],
                                                        source, destination)
        entry["repairs"] = self.repair(mode, server, entry)
        return entry

    def settle(self, name: str, before: int, starter) -> tuple[float, list[str]]:
        """Wait until the starter has returned and every new task ended (or SETTLE_S passed)."""
        t0 = time.monotonic()
        restarted = []
        while time.monotonic() - t0 < SETTLE_S:
            restarted += self.supervise()
            tasks = self.tasks_since(name, before)
            if starter.poll() is not None and all(t["status"] in status.MIGRATION_DONE
                                                  for t in tasks):
                break
            time.sleep(1)
        if starter.poll() is None:
            os.killpg(starter.pid, signal.SIGKILL)
            starter.wait(10)
        return round(time.monotonic() - t0, 1), restarted

    def check(self, mode: str, server: dict, tasks: list, source: str,
              destination: str) -> tuple[list[str], str | None]:
        """The invariants; returns (violations, how it was lost or None)."""
        name = server["name"]
        violations, lost = [], None
        place = where(self.lab, name)
        if not place:
            return ["defined on no node"], "defined nowhere"
        if len(place) > 1:
            violations.append(f"defined on {len(place)} nodes: {place}")
            lost = ("running on two nodes" if list(place.values()).count("running") > 1
                    else "defined on two nodes")
            # Judge the rest by the copy that runs (or the destination's).
            node = next((n for n, st in place.items() if st == "running"), destination)
            place = {node: place[node]}
        node, state = next(iter(place.items()))
        want = "running" if mode == status.MODE_LIVE else "shut off"
        if state != want:
            violations.append(f"{state} on {node}, should be {want}")
        if not self.disk_intact(mode, server, node, state):
            violations.append(f"disk content not intact on {node}")
            lost = lost or "disk damaged"
        for task in tasks:
            if task["status"] not in status.MIGRATION_DONE:
                violations.append(f"task {task['id']} never ended: {task['status']} "
                                  f"({task['phase']})")
            elif task["status"] == status.MIGRATION_ATTENTION:
                violations.append(f"task {task['id']} needs attention: {task['error']}")
            elif task["status"] == status.MIGRATION_FINISHED and node != task["destination"]:
                violations.append(f"task {task['id']} says finished but the server is on {node}")
            elif task["status"] in (status.MIGRATION_FAILED, status.MIGRATION_CANCELLED) \
                    and node != task["source"]:
                violations.append(f"task {task['id']} says {task['status']} but the server "
                                  f"moved to {node}")
        with self.app.app_context():
            row = db.session.scalar(db.select(Server).filter_by(name=name))
            recorded = row.compute_resource.name if row and row.compute_resource else None
        if recorded != node:
            violations.append(f"the inventory says {recorded}, libvirt says {node}")
        for other in ("node1", "node2", "node3"):
            if other != node:
                left = sorted(f for f in images(self.lab, other) if f.startswith(name + "."))
                if left:
                    violations.append(f"left on {other}: {', '.join(left)}")
        return violations, lost

    def disk_intact(self, mode: str, server: dict, node: str, state: str) -> bool:
        """The guest's own md5 check (running), or a comparison with its source image."""
        if mode == status.MODE_LIVE:
            if state != "running":
                self.lab.exec(node, "virsh", "start", server["name"])
            try:
                return self.lab.wait_for_guest(server["ip"], 60).get("seed_md5_ok") is True
            except AssertionError:
                return False
        disk = self.disk_path(node, server)
        compared = self.lab.exec(node, "qemu-img", "compare", "-U", self.template[server["name"]],
                                 disk)
        return compared.returncode == 0

    def disk_path(self, node: str, server: dict) -> str:
        """The disk path the node's definition of the server uses now."""
        xml = self.lab.exec(node, "virsh", "dumpxml", "--inactive", server["name"]).stdout
        found = re.search(r"<source file='([^']+)'", xml)
        return found.group(1) if found else server["disk"]["path"]

    def repair(self, mode: str, server: dict, entry: dict) -> list[str]:
        """Put things right for the next injection; every step is reported."""
        done = []
        name = server["name"]
        if any(t["status"] == status.MIGRATION_RUNNING for t in entry["tasks"]):
            # Its job hangs in the worker: free the worker for the next injection.
            self.workers.kill(self.worker)
            self.supervise()
            done.append("killed the worker whose job hung; a new one started")
        with self.app.app_context():
            for task in entry["tasks"]:
                row = db.session.get(MigrationTask, task["id"])
                if row.status not in status.MIGRATION_DONE:
                    if row.status == status.MIGRATION_PREFLIGHT:
                        row.status, row.error = status.MIGRATION_FAILED, "abandoned in preflight"
                        db.session.commit()
                    else:
                        recovery.reconcile_task(row)
                        db.session.commit()
                    done.append(f"task {row.id}: settled by hand ({row.status})")
                group = db.session.get(MigrationGroup, row.group_id)
                if group.status not in status.MIGRATION_DONE:
                    limits.release_group_slot(group.id)
                    group.status = status.MIGRATION_FAILED
                    db.session.commit()
                    done.append(f"group {group.id}: closed by hand")
        if entry["lost"]:
            self.lab.rmserver(name)
            self.new_server(mode)
            return done + [f"{name} removed and made again"]
        place = where(self.lab, name)
        node, state = next(iter(place.items()))
        if mode == status.MODE_LIVE and state != "running":
            self.lab.exec(node, "virsh", "start", name)
            done.append(f"started {name} on {node}")
        if mode == status.MODE_OFFLINE and state != "shut off":
            self.lab.exec(node, "virsh", "destroy", name)
            done.append(f"stopped {name} on {node}")
        for other in ("node1", "node2", "node3"):
            if other != node:
                for leftover in images(self.lab, other):
                    if leftover.startswith(name + "."):
                        self.lab.exec(other, "rm", "-f", f"/var/lib/libvirt/images/{leftover}")
                        done.append(f"removed {leftover} from {other}")
        sync(self.app, self.fleet)
        return done

    def close(self) -> None:
        """Stop the suite's processes and remove its servers."""
        self.workers.stop()
        self.web.stop()
        self.redis.stop()
        for made in self.servers.values():
            self.lab.rmserver(made["name"])
        remove_leftover_servers(self.lab)
        with self.app.app_context():
            db.session.remove()
            for engine in db.engines.values():
                engine.dispose()


def plan(seed: int, count: int) -> list[tuple[str, str]]:
    """`count` (fault, mode) pairs: every combination in turn, in a seeded order."""
    combos = [(f, m) for f in FAULTS for m in MODES]
    random.Random(seed).shuffle(combos)
    return [combos[i % len(combos)] for i in range(count)]


def main(argv=None) -> int:
    """Run the injections and the fuzzing; write the results."""
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 injections, 600 fuzz inputs")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--injections", type=int, help="default 52 (quick: 4)")
    parser.add_argument("--fuzz", type=int, help="fuzz inputs, default 10000 (quick: 600)")
    args = parser.parse_args(argv)
    report.exit_cleanly_on_sigterm()
    injections = args.injections or (len(QUICK_PLAN) if args.quick else 52)
    schedule = (QUICK_PLAN[:injections] if args.quick and not args.injections
                else plan(args.seed, injections))
    t0 = time.monotonic()
    document = {"mode": "quick" if args.quick else "full", "seed": args.seed,
                "started_at": report.stamp(), "machine_at_start": report.machine(),
                "settings": {"window_s": WINDOW_S, "settle_s": SETTLE_S,
                             "orphan_after_s": ORPHAN_AFTER},
                "injections": [], "errors": []}
    suite = None
    try:
        suite = Suite(args.seed)
        for index, (fault, mode) in enumerate(schedule):
            print(f"faults: {index + 1}/{len(schedule)} {fault} during {mode} ...",
                  file=sys.stderr, flush=True)
            try:
                entry = suite.run_one(index, fault, mode)
            except Exception:  # noqa: BLE001 - record it, make the servers again, go on
                entry = {"index": index, "fault": fault, "mode": mode,
                         "harness_error": traceback.format_exc(), "violations": ["harness error"],
                         "lost": None}
                print(entry["harness_error"], file=sys.stderr)
                with contextlib.suppress(Exception):
                    suite.lab.rmserver(suite.servers[mode]["name"])
                    suite.new_server(mode)
            document["injections"].append(entry)
            print(f"faults:   {'ok' if not entry['violations'] else entry['violations']}",
                  file=sys.stderr, flush=True)
        document["fuzz"] = fuzz.run(600 if args.quick and not args.fuzz else args.fuzz or 10000,
                                    suite.redis_url, seed_value=args.seed)
    except Exception:  # noqa: BLE001 - whatever broke is in the results
        document["errors"].append(traceback.format_exc())
        print(document["errors"][-1], file=sys.stderr)
    except (KeyboardInterrupt, SystemExit):  # stopped: keep what was measured
        document["errors"].append(f"interrupted after {len(document['injections'])} injections")
    finally:
        if suite is not None:
            suite.close()
    entries = document["injections"]
    document["summary"] = {
        "injections": len(entries),
        "survived": sum(1 for e in entries if not e["violations"]),
        "lost": sum(1 for e in entries if e["lost"]),
        "lost_by_kind": {kind: sum(1 for e in entries if e["lost"] == kind)
                         for kind in sorted({e["lost"] for e in entries if e["lost"]})},
        "with_violations": sum(1 for e in entries if e["violations"]),
        "by_fault": {f: {"injections": sum(e["fault"] == f for e in entries),
                         "survived": sum(e["fault"] == f and not e["violations"] for e in entries)}
                     for f in FAULTS},
        "target": "0 lost over >= 50 injections; fuzz: >= 10,000 inputs, 0 server errors, "
                  "0 actions started",
    }
    return report.finish("faults", args.quick, document, t0, markdown)


def markdown(doc: dict) -> str:
    """The short summary."""
    s = doc["summary"]
    lines = [f"# Ferry fault suite ({doc['mode']} run, seed {doc['seed']})", "",
             f"Started {doc['started_at']}, took {doc['duration_s']} s (load average at start "
             f"{doc['machine_at_start']['loadavg'][0]}).", "",
             f"**{s['injections']} injections: {s['survived']} survived every check, "
             f"{s['lost']} lost a server, {s['with_violations']} broke some invariant.** "
             "Target: 0 lost over at least 50."
             + (f" Lost: {json.dumps(s['lost_by_kind'])}." if s["lost"] else ""), "",
             "| Fault | Injections | Survived |", "|---|---|---|"]
    lines += [f"| {f} | {v['injections']} | {v['survived']} |" for f, v in s["by_fault"].items()]
    bad = [e for e in doc["injections"] if e["violations"]]
    if bad:
        lines += ["", "Injections that broke an invariant:", ""]
        lines += [f"- #{e['index']} {e['fault']} during {e['mode']} "
                  f"({(e.get('at_injection') or {}).get('status')}/"
                  f"{(e.get('at_injection') or {}).get('phase')}): {'; '.join(e['violations'])}"
                  for e in bad]
    fz = doc.get("fuzz")
    if fz:
        lines += ["", f"Fuzz: {fz['inputs']} inputs ({json.dumps(fz['by_surface'])}), "
                      f"{fz['server_errors']} server errors, {fz.get('actions', 0)} actions "
                      f"started. Target: >= 10,000, 0 and 0."
                      + (f" Skipped: {fz['skipped']}" if fz.get("skipped") else "")]
    for error in doc["errors"]:
        lines += ["", f"**The suite broke:** `{error.strip().splitlines()[-1]}`"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

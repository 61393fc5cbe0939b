"""The stage the benchmarks and the fault suite play on: the lab, a Ferry app on PostgreSQL, the
lab's nodes registered as compute resources, and the two ways of moving a server (Ferry, bare virsh).

The lab instance comes from FERRY_LAB_NAME / FERRY_LAB_NET (the Makefile's bench and faults
targets use the test lab); the database from FERRY_BENCH_DATABASE_URL. Every server made here
is named `bench-...` and removed at the end, wherever it ended up.
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app import create_app, status, upgrade_database
from app.extensions import db
from app.models import ComputeResource, IpBlock, MigrationGroup, MigrationTask
from app.services import limits, migration, resources
from bench.fleet import server_id, sync
from lab.client import FERRY_LAB, TEST_LAB_NAME, Lab, hold, lab_env, where

DATABASE_URL = os.environ.get("FERRY_BENCH_DATABASE_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/ferry_bench")
# The benchmarks run migrations in this process and never enqueue: Redis is only configured.
REDIS_URL = os.environ.get("FERRY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
PREFIX = "bench-"
IMAGES = "/var/lib/libvirt/images"

# What an administrator types on the source host to move a server by hand (lab/README.md):
# a sparse destination disk first, then libvirt's own p2p live migration with copied storage.
# At the deadline, if one is given, the job is aborted as Ferry's ladder would.
BARE_VIRSH = r"""
name=$1 dst=$2 path=$3 size=$4 fmt=$5 deadline=$6
t0=$(date +%s.%N)
ssh -o BatchMode=yes "root@$dst" qemu-img create -q -f "$fmt" "$path" "$size" || exit 90
virsh migrate --live --p2p --copy-storage-all --persistent --undefinesource \
    "$name" "qemu+ssh://root@$dst/system" &
migrate=$!
watchdog=
if [ "$deadline" != 0 ]; then
    ( sleep "$deadline"; virsh domjobabort "$name" >/dev/null 2>&1 ) &
    watchdog=$!
fi
wait "$migrate"; rc=$?
t1=$(date +%s.%N)
[ -n "$watchdog" ] && kill "$watchdog" 2>/dev/null
echo "bare-virsh rc=$rc t0=$t0 t1=$t1"
"""


def fresh_database(url: str) -> None:
    """Create the PostgreSQL database if it is missing, then empty it (a fresh public schema)."""
    parts = make_url(url)
    admin = create_engine(parts.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :name"),
                              {"name": parts.database}).scalar()
        if not exists:
            conn.execute(text(f'CREATE DATABASE "{parts.database}"'))
    admin.dispose()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


# The app refuses a short secret key outside tests; the bench's apps are thrown away after.
BENCH_SECRET_KEY = "ferry-bench-throwaway-secret-key-" + "0" * 16


def make_app(database_url: str, instance_path: str, **config):
    """A Ferry app on database_url with its schema migrated; config overrides the defaults."""
    app = create_app({"SECRET_KEY": BENCH_SECRET_KEY, "SQLALCHEMY_DATABASE_URI": database_url,
                      "REDIS_URL": REDIS_URL, "INSTANCE_PATH": instance_path,
                      "SSH_TIMEOUT": 10, **config})
    upgrade_database(app)
    return app


_HELD = {}  # lab name -> the lock file this process holds until it exits


def bring_up_lab(nodes: int = 3) -> Lab:
    """The lab instance of the environment, brought up (idempotent) with `nodes` nodes, and
    held by this process until it exits (a test session or another benchmark waits)."""
    if TEST_LAB_NAME not in _HELD:
        _HELD[TEST_LAB_NAME] = hold(say=lambda line: print(line, file=sys.stderr, flush=True))
    proc = subprocess.run([FERRY_LAB, "up", "--nodes", str(nodes)], env=lab_env(),
                          capture_output=True, text=True, timeout=900)
    if proc.returncode:
        raise RuntimeError(f"the lab did not come up: {proc.stderr}{proc.stdout}")
    return Lab()


def register(app, lab: Lab) -> dict:
    """Register the lab's nodes (host keys pinned) and its IP blocks; returns name -> id."""
    with app.app_context():
        ids = {}
        for node in lab.status["nodes"]:
            ids[node["name"]] = resources.add(
                node["name"], node["address"], node["user"], lab.status["ssh_key"],
                node["port"], storage_tags=node["storage_tags"]).id
        for spec in lab.status["ip_blocks"]:
            db.session.add(IpBlock(name=spec["name"], cidr=spec["cidr"], gateway=spec["gateway"],
                                   compute_resources=[db.session.get(ComputeResource, ids[n])
                                                      for n in spec["nodes"]]))
        db.session.commit()
    return ids


def remove_leftover_servers(lab: Lab) -> list[str]:
    """Remove every `bench-` server a previous, interrupted run left in the lab, and undo its
    link shaping or cut."""
    names = sorted({s["name"] for s in lab.servers() if s["name"].startswith(PREFIX)})
    for name in names:
        lab.rmserver(name)
    for node in lab.status["nodes"]:  # disks of servers that were undefined but not deleted
        lab.exec(node["name"], "sh", "-c", f"rm -f {IMAGES}/{PREFIX}*")
        lab.cli("link", node["name"], "rate", "off", check=False)  # a killed run's shaping
        lab.cli("link", node["name"], "up", check=False)
    return names


class Stage:
    """The lab, an app on a fresh database and the registered fleet, for one bench run."""

    def __init__(self, database_url: str = DATABASE_URL, nodes: int = 3, **config):
        self.lab = bring_up_lab(nodes)
        remove_leftover_servers(self.lab)
        fresh_database(database_url)
        self.database_url = database_url
        self.instance = tempfile.mkdtemp(prefix="ferry-bench-")
        self.app = make_app(database_url, self.instance, **config)
        self.fleet = register(self.app, self.lab)
        self.made: dict[str, dict] = {}

    def node_address(self, name: str) -> str:
        """A node's address on the management/migration network."""
        return self.lab.node(name)["address"]

    def server(self, node: str, name: str, **opts) -> dict:
        """Make a lab server (removed by close()); options as ferry-lab mkserver flags."""
        made = self.lab.mkserver(node, name, **opts)
        self.made[name] = made
        return made

    def boot(self, names, timeout: float = 120) -> None:
        """Wait until each named server's guest answers on its status page."""
        for name in names:
            self.lab.wait_for_guest(self.made[name]["ip"], timeout)

    def sync(self) -> None:
        """Re-read every node's servers into the inventory."""
        sync(self.app, self.fleet)

    def where(self, name: str) -> dict:
        """{node: state} of the lab domains with this name."""
        return where(self.lab, name)

    def ferry(self, names, to: str, give_up_after: float = 300, **options) -> dict:
        """Migrate servers with Ferry in this process, timed from the service call to the end.

        Returns the group's report plus `call_s` (start_group: load, preflight, start) and
        `run_s` (run_group: every task until the last server runs on its destination).
        """
        options.setdefault("acknowledge_warnings", True)
        ids = tuple(server_id(self.app, n) for n in names)
        with self.app.app_context():
            t0 = time.monotonic()
            group = migration.start_group(migration.Request(
                server_ids=ids, destination_id=self.fleet[to], **options), enqueue=False)
            t1 = time.monotonic()
            group_id, running = group.id, group.status == status.MIGRATION_RUNNING
        hung = running and not self.run_group(group_id, give_up_after)
        t2 = time.monotonic()
        with self.app.app_context():
            report = migration.group_report(db.session.get(MigrationGroup, group_id))
        report.update(call_s=t1 - t0, run_s=t2 - t1, total_s=t2 - t0, hung=hung)
        return report

    def run_group(self, group_id: int, give_up_after: float) -> bool:
        """Run a started group's job in a thread of its own, as the worker would; False if it
        had not returned after give_up_after seconds (then see give_up)."""
        def work():
            with self.app.app_context():
                migration.run_group(group_id)

        thread = threading.Thread(target=work, daemon=True, name=f"group-{group_id}")
        thread.start()
        thread.join(give_up_after)
        if thread.is_alive():
            self.give_up(group_id, thread, give_up_after)
            return False
        return True

    def give_up(self, group_id: int, thread, waited: float) -> None:
        """What an operator does about a migration job that stopped moving: abort the libvirt
        job on the source (so the guest is not throttled forever), and if the job still does
        not return, record that on its tasks and free the limits it holds."""
        with self.app.app_context():
            group = db.session.get(MigrationGroup, group_id)
            running = [(t.id, t.server.name, t.source.name) for t in group.tasks
                       if t.status == status.MIGRATION_RUNNING]
        for _, name, source in running:
            self.lab.exec(source, "virsh", "domjobabort", name)
        thread.join(60)
        if not thread.is_alive():
            return
        with self.app.app_context():
            for task_id, _, _ in running:
                task = db.session.get(MigrationTask, task_id)
                task.status, task.phase = status.MIGRATION_ATTENTION, None
                task.error = (f"the bench gave up after {waited:.0f} s: the job's monitor loop "
                              "stopped returning from libvirt; the bench aborted the libvirt job")
                limits.release_resources(task_id)
            limits.release_group_slot(group_id)
            group = db.session.get(MigrationGroup, group_id)
            group.status = status.MIGRATION_FAILED
            db.session.commit()

    def virsh(self, name: str, src: str, dst: str, deadline: float = 0) -> dict:
        """Move a running server with bare `virsh migrate` typed on its source (see BARE_VIRSH).

        Timed inside the source node, so the lab's own command overhead is not counted.
        The source's disk, which libvirt never deletes, is removed afterwards (not timed).
        """
        disk = self.made[name]["disk"]
        proc = self.lab.exec(src, "sh", "-c", BARE_VIRSH, "bare-virsh", name,
                             self.node_address(dst), disk["path"], str(disk["virtual_size"]),
                             disk["format"], str(int(deadline)), timeout=max(600, deadline + 120))
        found = re.search(r"bare-virsh rc=(\d+) t0=([\d.]+) t1=([\d.]+)", proc.stdout)
        if not found:
            raise RuntimeError(f"bare virsh did not run: {proc.stdout}{proc.stderr}")
        rc, t0, t1 = int(found.group(1)), float(found.group(2)), float(found.group(3))
        place = self.where(name)
        moved = rc == 0 and place == {dst: "running"}
        result = {"ok": moved, "seconds": t1 - t0, "rc": rc, "where": place,
                  "error": None if moved else (proc.stderr.strip()[-400:] or f"rc {rc}")}
        if moved:
            result.update(completed_job(self.lab, dst, name))
            self.lab.exec(src, "rm", "-f", disk["path"], check=True)
        else:  # aborted or failed: the source keeps it; the destination's disk goes
            self.lab.exec(dst, "rm", "-f", disk["path"], check=True)
        return result

    @contextlib.contextmanager
    def shaped(self, nodes, mbit):
        """Shape the links of `nodes` to mbit Mbit/s for the duration of the block."""
        try:
            for node in nodes:
                self.lab.cli("link", node, "rate", str(mbit))
            yield
        finally:
            for node in nodes:
                self.lab.cli("link", node, "rate", "off", check=False)

    def clear(self) -> None:
        """Remove every server made on this stage, and its disks, from every node (a figure
        starts with the nodes as empty as it found them: an evacuation moves all it finds)."""
        for name in self.made:
            self.lab.rmserver(name)
        self.made.clear()

    def close(self) -> None:
        """Clear the lab and let go of the database."""
        self.clear()
        with self.app.app_context():
            db.session.remove()
            for engine in db.engines.values():
                engine.dispose()


class Pinger:
    """Ping a guest every 50 ms from the probe side; the longest silence is the downtime a
    client saw (one instrument for both sides of a comparison, 50 ms resolution)."""

    INTERVAL = 0.05

    def __init__(self, ip: str):
        self.ip = ip
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen(["ping", "-n", "-D", "-i", str(self.INTERVAL), "-W", "1",
                                      self.ip], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        stamps = [float(m) for m in re.findall(r"^\[([\d.]+)\].*bytes from", out, re.M)]
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        self.replies = len(stamps)
        self.longest_gap_ms = round(max(gaps) * 1000) if gaps else None


def completed_job(lab: Lab, node: str, name: str) -> dict:
    """Downtime, time and bytes of the last migration, from `virsh domjobinfo --completed`."""
    out = lab.exec(node, "virsh", "domjobinfo", "--completed", name).stdout
    fields = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()

    def number(key, scale=1):
        value = fields.get(key, "")
        match = re.match(r"([\d.]+)\s*(\w+)?", value)
        if not match:
            return None
        units = {"b": 1, "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3, "ms": 1}
        return float(match.group(1)) * units.get((match.group(2) or "b").lower(), 1) * scale

    return {"downtime_ms": number("total downtime"), "libvirt_ms": number("time elapsed"),
            "bytes": number("data processed")}

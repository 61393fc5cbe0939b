"""The control plane at scale: a synthetic inventory in PostgreSQL, pages served by gunicorn,
evacuation planning for a large and a small compute resource.

No lab here: 5,000 servers on 200 compute resources are written straight into the database
(rows shaped like a real sync's), the app is served by gunicorn as in production, and a
signed-in client alternates between the dashboard, the servers list and a static file.
"""
from __future__ import annotations

import contextlib
import http.cookiejar
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid

from sqlalchemy import insert

from app.extensions import db
from app.models import ComputeResource, Disk, IpBlock, Server, User, resource_ip_blocks
from app.services import evacuation
from bench import ROOT
from bench.stage import BENCH_SECRET_KEY, fresh_database, make_app
from bench.stats import percentile, ratio, summary

PASSWORD = "bench bench bench"
STATIC = "/static/app.css"
GIB = 1024 ** 3


def populate(app, servers: int, resources: int, big: int, small: int) -> dict:
    """Write `resources` compute resources and `servers` servers; the first holds `big`
    servers and the second `small`, the rest spread evenly. Returns their ids."""
    if big + small > servers or resources < 3:
        raise ValueError("need big + small <= servers and at least 3 resources")
    counts = [big, small] + [0] * (resources - 2)
    for i in range(servers - big - small):
        counts[2 + i % (resources - 2)] += 1
    facts = {"memory": {"total_mib": 1024 * 1024, "free_mib": 768 * 1024},
             "cpu": {"cpuinfo": {"vendor_id": "GenuineIntel", "family": "6"}},
             "storage_pools": [{"name": "default", "type": "dir", "path": "/var/lib/libvirt/images",
                                "free_bytes": 50 * 1024 * GIB}]}
    with app.app_context():
        user = User(username="bench", role="admin")
        user.set_password(PASSWORD)
        db.session.add(user)
        rows = [{"id": k + 1, "name": f"cr{k + 1:03d}", "host": f"10.200.{k // 250}.{k % 250 + 1}",
                 "port": 22, "user": "root", "key_path": "/nonexistent", "status": "active",
                 "facts": facts, "storage_tags": [], "backup_dir": "/var/lib/ferry/backups"}
                for k in range(resources)]
        db.session.execute(insert(ComputeResource), rows)
        # A /24 of its own per compute resource, as a hosting team would route them.
        db.session.execute(insert(IpBlock), [
            {"id": k + 1, "name": f"net{k + 1:03d}", "cidr": f"10.{100 + k // 256}.{k % 256}.0/24",
             "gateway": f"10.{100 + k // 256}.{k % 256}.1"} for k in range(resources)])
        db.session.execute(insert(resource_ip_blocks), [
            {"compute_resource_id": k + 1, "ip_block_id": k + 1} for k in range(resources)])
        server_rows, disk_rows, sid = [], [], 0
        for k, count in enumerate(counts):
            for _ in range(count):
                sid += 1
                server_rows.append({
                    "id": sid, "uuid": str(uuid.uuid4()), "name": f"vps{sid:05d}",
                    "compute_resource_id": k + 1, "state": "running" if sid % 7 else "stopped",
                    "vcpus": 1 + sid % 4, "memory_mib": 512 * (1 + sid % 8), "snapshot_count": 0,
                    "persistent": True})
                disk_rows.append({
                    "server_id": sid, "target": "vda", "format": "qcow2",
                    "path": f"/var/lib/libvirt/images/vps{sid:05d}.qcow2",
                    "storage_type": "file-qcow2", "virtual_size": (10 + sid % 90) * GIB,
                    "allocation": (2 + sid % 8) * GIB})
        db.session.execute(insert(Server), server_rows)
        db.session.execute(insert(Disk), disk_rows)
        db.session.commit()
        analyze(db.engine)
    return {"big": 1, "small": 2}


def analyze(engine) -> None:
    """Leave the rows just written as autovacuum leaves them on a server soon after a bulk load
    (or a restore): vacuumed, so the visibility map lets index-only scans skip the table, and
    analyzed, so the planner has statistics. This machine's PostgreSQL runs with autovacuum
    off: without statistics the planner guessed a few hundred disks and read all 5,000 for
    every page of the servers list instead of using the index, and without the visibility map
    every count of a node's servers fetched its rows from the table."""
    if engine.dialect.name != "postgresql":
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")  # VACUUM runs outside a transaction


def free_port() -> int:
    """A TCP port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def served(database_url: str, instance_path: str, workers: int = 2, **env):
    """The app served by gunicorn on a free local port; yields its base URL. env: more
    environment variables for it (FERRY_REDIS_URL=...)."""
    port = free_port()
    env = dict(os.environ, FERRY_DATABASE_URL=database_url, FERRY_INSTANCE_PATH=instance_path,
               FERRY_SECRET_KEY=BENCH_SECRET_KEY, FERRY_SYNC_INTERVAL="0", **env)
    log = open(os.path.join(instance_path, "gunicorn.log"), "w")
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "gunicorn"), "-w", str(workers),
         "-b", f"127.0.0.1:{port}", "wsgi:app"], cwd=ROOT, env=env, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(base + STATIC, timeout=2):
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not start (see {log.name})")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def signed_in(base: str):
    """A urllib opener with a session cookie of the bench user (signed in through the form)."""
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
        urllib.request.ProxyHandler({}))
    page = opener.open(base + "/login", timeout=30).read().decode()
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page) or re.search(
        r'<meta name="csrf-token" content="([^"]+)"', page)
    data = urllib.parse.urlencode({"username": "bench", "password": PASSWORD,
                                   "csrf_token": token.group(1)}).encode()
    opener.open(base + "/login", data=data, timeout=30).read()
    return opener


def page_latencies(base: str, rounds: int) -> dict:
    """Time each page `rounds` times, rotating which page goes first in each round."""
    opener = signed_in(base)
    paths = {"dashboard": "/", "servers": "/servers/", "static": STATIC}
    times = {name: [] for name in paths}
    sizes = {}
    names = list(paths)
    for path in paths.values():  # warm up: templates compiled, connections open
        opener.open(base + path, timeout=120).read()
    for i in range(rounds):
        for name in names[i % 3:] + names[:i % 3]:
            t0 = time.perf_counter()
            with opener.open(base + paths[name], timeout=120) as response:
                body = response.read()
                if response.status != 200 or response.url.rstrip("/").endswith("/login"):
                    raise RuntimeError(f"{paths[name]} answered {response.status} at "
                                       f"{response.url}")
            times[name].append(time.perf_counter() - t0)
            sizes[name] = len(body)
    p95 = {name: percentile(values, 95) for name, values in times.items()}
    return {"p95_s": {name: round(value, 6) for name, value in p95.items()},
            "median_s": {n: summary(v)["median"] for n, v in times.items()},
            "bytes": sizes, "requests_each": rounds,
            "dashboard_ratio": ratio(p95["dashboard"], p95["static"]),
            "servers_ratio": ratio(p95["servers"], p95["static"])}


def planning_times(app, big_id: int, small_id: int, pairs: int) -> dict:
    """evacuation.make_plan (inventory read, plan, stored) for the big and the small resource."""
    rows = []
    with app.app_context():
        for pair in range(pairs):
            row = {}
            for key, rid in (("big", big_id), ("small", small_id))[::1 if pair % 2 == 0 else -1]:
                db.session.expire_all()
                t0 = time.perf_counter()
                evac = evacuation.make_plan(rid)
                row[f"{key}_s"] = round(time.perf_counter() - t0, 4)
                plan = evac.plan_record
                row[f"{key}_moves"], row[f"{key}_unplaced"] = len(plan.moves), len(plan.unplaced)
            row["ratio"] = ratio(row["big_s"], row["small_s"])
            rows.append(row)
    return {"ratio": summary(r["ratio"] for r in rows), "pairs": rows}


def control_plane(database_url: str, servers: int, resources: int, big: int, small: int,
                  rounds: int, pairs: int) -> dict:
    """The whole figure on a database of its own: populate, serve, time pages and planning."""
    fresh_database(database_url)
    instance_path = tempfile.mkdtemp(prefix="ferry-bench-scale-")
    app = make_app(database_url, instance_path)
    ids = populate(app, servers, resources, big, small)
    with served(database_url, instance_path) as base:
        pages = page_latencies(base, rounds)
    plans = planning_times(app, ids["big"], ids["small"], pairs)
    with app.app_context():
        db.session.remove()
        for engine in db.engines.values():
            engine.dispose()
    return {
        "what": f"synthetic inventory of {servers} servers on {resources} compute resources in "
                f"PostgreSQL, served by gunicorn (2 workers); p95 of {rounds} requests per page, "
                f"pages alternating; evacuation planning (evacuation.make_plan: inventory read, "
                f"plan, stored) of a resource with {big} servers vs one with {small}",
        "pages": {**pages, "target": "<= 3",
                  "met": bool(pages["dashboard_ratio"] is not None
                              and pages["dashboard_ratio"] <= 3 and pages["servers_ratio"] <= 3)},
        "planning": {**plans, "servers": [big, small], "target": "<= 12",
                     "met": bool(plans["ratio"] and plans["ratio"]["median"] <= 12)},
    }

"""CLI start-up: how long `flask --app wsgi resources list` and `flask --app wsgi --help` take,
wall time from the shell's fork to the process's exit, as a person at a terminal feels it.

No lab: the compute resources are rows written straight into a PostgreSQL database of the
figure's own (`<FERRY_BENCH_DATABASE_URL>_cli`); `resources list` only reads them. Runs of the
two commands alternate, after one unmeasured warm-up run of each (bytecode compiled, files in
the page cache), so the figure is the steady state of a machine that has run Ferry before.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time

from sqlalchemy import insert

from app.extensions import db
from app.models import ComputeResource
from bench import ROOT
from bench.stage import BENCH_SECRET_KEY, fresh_database, make_app
from bench.stats import summary

TARGET_S = 0.5
FLASK = os.path.join(os.path.dirname(sys.executable), "flask")  # the venv's, as a user types it
COMMANDS = {"resources_list": ["resources", "list"], "help": ["--help"]}


def populate(app, resources: int) -> None:
    """Write `resources` compute resources (as `resources add` would leave them)."""
    with app.app_context():
        db.session.execute(insert(ComputeResource), [
            {"name": f"cr{k + 1:03d}", "host": f"10.200.0.{k + 1}", "port": 22, "user": "root",
             "key_path": "/nonexistent", "status": "active", "facts": {}, "storage_tags": [],
             "backup_dir": "/var/lib/ferry/backups",
             "host_key_fingerprint": "SHA256:bench"} for k in range(resources)])
        db.session.commit()
        db.session.remove()
        for engine in db.engines.values():
            engine.dispose()


def command_env(database_url: str, instance_path: str, **more) -> dict:
    """The environment of a `flask --app wsgi` command on that database; more: FERRY_*=...

    Bytecode may be written: the first run writes what a machine that has run Ferry before
    keeps, where a shell that forbids it would time compiling the app's sources every run."""
    env = dict(os.environ, FERRY_DATABASE_URL=database_url, FERRY_INSTANCE_PATH=instance_path,
               FERRY_SECRET_KEY=BENCH_SECRET_KEY, **more)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def timed(argv: list, env: dict) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of `flask --app wsgi ARGV`; raises if it failed.
    The CPU time is what a busy machine does not inflate much, so it is kept beside the wall."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([FLASK, "--app", "wsgi", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(f"flask {' '.join(argv)} failed: {proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu


def startup(database_url: str, runs: int, resources: int = 20) -> dict:
    """The whole figure: median (and spread) wall time of each command over `runs` runs."""
    fresh_database(database_url)
    instance_path = tempfile.mkdtemp(prefix="ferry-bench-cli-")
    populate(make_app(database_url, instance_path), resources)
    env = command_env(database_url, instance_path)
    for argv in COMMANDS.values():  # warm-up, not counted
        timed(argv, env)
    times = {name: [] for name in COMMANDS}
    cpu = {name: [] for name in COMMANDS}
    for i in range(runs):
        for name in list(COMMANDS)[::1 if i % 2 == 0 else -1]:
            wall, used = timed(COMMANDS[name], env)
            times[name].append(wall)
            cpu[name].append(used)
    stats = {name: summary(values) for name, values in times.items()}
    return {
        "what": f"wall time of `flask --app wsgi resources list` ({resources} compute resources "
                f"in PostgreSQL) and of `flask --app wsgi --help`, {runs} runs each, alternating, "
                "after one warm-up run of each",
        "resources_list_s": stats["resources_list"], "help_s": stats["help"],
        "cpu_s": {name: summary(values) for name, values in cpu.items()},
        "runs": {name: [round(v, 4) for v in values] for name, values in times.items()},
        "target": f"<= {TARGET_S} s",
        "met": bool(stats["resources_list"]["median"] <= TARGET_S
                    and stats["help"]["median"] <= TARGET_S),
    }

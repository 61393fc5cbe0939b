"""Real `python -m worker` processes for the tests, the fault suite and the fault matrix.

They share one database and one Redis db, as workers on several machines would. Killing
one is by PID (the worker and the work horses it forked), never by name.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from bench import ROOT

# Outside TESTING the app refuses a key shorter than 32 characters (these processes are real
# deployments of the app, not test apps); the browser tests' gunicorn shares this env.
WORKER_SECRET_KEY = "ferry-test-workers-secret-key-" + "0" * 16


class Workers:
    """`python -m worker` processes sharing one database and one Redis db."""

    def __init__(self, database_url, redis_url, instance_path):
        self.env = dict(os.environ, FERRY_DATABASE_URL=database_url, FERRY_REDIS_URL=redis_url,
                        FERRY_INSTANCE_PATH=str(instance_path), FERRY_SYNC_INTERVAL="0",
                        FERRY_SECRET_KEY=WORKER_SECRET_KEY, FERRY_SSH_TIMEOUT="10")
        self.instance_path = instance_path
        self.procs = []

    def start(self, count=1, schedule=False, **settings):
        """Start `count` workers; settings become FERRY_* variables (orphan_after=8).

        schedule=True keeps the worker's scheduler thread (outbox, recovery passes every
        tick); by default only the recovery pass at its start runs.
        """
        env = dict(self.env, **{f"FERRY_{k.upper()}": str(v) for k, v in settings.items()})
        started = []
        for _ in range(count):
            path = os.path.join(self.instance_path, f"worker-{len(self.procs)}.log")
            argv = [sys.executable, "-m", "worker"] + ([] if schedule else ["--no-schedule"])
            with open(path, "w") as log:
                proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            proc.log_path = path
            self.procs.append(proc)
            started.append(proc)
        return started

    @staticmethod
    def horses(proc):
        """The work horses a worker forked (RQ puts each in a process group of its own)."""
        try:
            with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as handle:
                return [int(pid) for pid in handle.read().split()]
        except FileNotFoundError:
            return []

    def kill(self, proc):
        """SIGKILL a worker and its work horses, by PID, as a crash or the OOM killer would."""
        for pid in self.horses(proc):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.kill()
        proc.wait(10)

    def logs(self):
        """Every worker's output, for a failing assertion's message."""
        out = []
        for proc in self.procs:
            with open(proc.log_path) as handle:
                out.append(f"--- worker pid {proc.pid} ---\n{handle.read()[-4000:]}")
        return "\n".join(out)

    def stop(self):
        """Stop every worker still running: SIGTERM (warm shutdown), SIGKILL if it lingers."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill(proc)

"""A worker process forks a work horse per job (RQ) and a child per recovery pass while its
own threads (the heartbeat, the scheduler) write to the database. A fork taken while such a
thread is inside SQLite leaves the child a lock it can never take back: its first database
call hangs for good or fails "database is locked". The demo's browser test once saw exactly
that: the work horse of a sync job was started by RQ and never wrote the job's first row.

These tests fork the way the worker does, under a heartbeat beating as fast as it can, and
require every child to reach the database within a few seconds.
"""
import os
import signal
import threading
import time

import pytest
from sqlalchemy import text

from app.extensions import db
from app.services import workers
from worker import schedule
from worker.runtime import forget_parent_connections

CHILDREN = 20
CHILD_DEADLINE_S = 8  # a healthy child needs milliseconds; a stuck one never finishes


@pytest.fixture
def beating(app):
    """The worker's heartbeat thread, beating with no pause, on the app's SQLite file."""
    stop = workers.start_heartbeat(app, "fork-test", every=0)
    yield app
    stop.set()
    time.sleep(0.05)  # let the loop see the event before the app's engine is disposed


def _child_writes(app):
    """In a forked child: a fresh pool, then a beat of its own (a write, like jobs.run's)."""
    forget_parent_connections(app)  # as the work horse and the recovery child do
    with app.app_context():
        workers.beat("child", f"c{os.getpid()}", os.getpid())
        db.session.execute(text("SELECT 1"))
        db.session.remove()


def _fork_and_wait(app):
    """Fork like RQ does (os.fork), run _child_writes; 'ok', 'failed' or 'hung'."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _child_writes(app)
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + CHILD_DEADLINE_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "ok" if os.waitstatus_to_exitcode(status) == 0 else "failed"
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "hung"


def test_a_forked_work_horse_always_reaches_the_database_while_the_heartbeat_writes(beating):
    outcomes = [_fork_and_wait(beating) for _ in range(CHILDREN)]
    assert outcomes == ["ok"] * CHILDREN


def test_a_recovery_child_always_reaches_the_database_while_the_heartbeat_writes(beating):
    def work():
        _child_writes(beating)
        return [["child", "ok"]]

    results = [schedule.in_child(beating, work) for _ in range(CHILDREN)]
    assert results == [[("child", "ok")]] * CHILDREN


def holding_the_turn():
    """A thread that holds forkguard's turn until the returned `leave` Event is set; it sets
    `released` just before it lets go."""
    from app.infra import forkguard
    inside, leave, released = threading.Event(), threading.Event(), threading.Event()

    def hold():
        with forkguard.database_turn():
            inside.set()
            leave.wait(30)
            released.set()

    threading.Thread(target=hold, daemon=True).start()
    assert inside.wait(5)
    return leave, released


def fork_and_reap():
    """Fork (the child exits at once) and reap the child."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def test_the_guard_waits_for_a_thread_inside_the_database_before_a_fork(app):
    """While a thread holds the guard, a fork waits for it (the hook takes the same lock):
    the fork returns only after the holder has let go."""
    leave, released = holding_the_turn()
    threading.Timer(0.3, leave.set).start()
    fork_and_reap()
    assert released.is_set()


def test_a_fork_waits_for_a_stuck_database_thread_only_so_long(app, monkeypatch, caplog):
    """A thread stuck in a database that stopped answering does not stop every fork: the
    fork goes ahead after FORK_WAIT_S, with a warning, while the thread still holds on."""
    from app.infra import forkguard
    monkeypatch.setattr(forkguard, "FORK_WAIT_S", 0.3)
    leave, released = holding_the_turn()
    try:
        fork_and_reap()
        assert not released.is_set()
        assert "forking while another thread" in caplog.text
    finally:
        leave.set()
    with forkguard.database_turn():  # nobody was left holding it
        pass

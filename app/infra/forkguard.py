"""One lock between the threads of a process that use the database and the forks it takes.

The worker forks a work horse per job (RQ) and a child per recovery pass while its own
threads (the heartbeat, the scheduler) read and write the database. SQLite keeps its locks
and mutexes in the process: a fork taken while another thread is inside a transaction gives
the child a lock nobody will release, and the child's first database call then hangs for
good or fails "database is locked" (the sync job of the demo did: started, never recorded).
PostgreSQL connections are not shared with the child (it disposes the pool), but the same
rule costs nothing there.

So a background thread of the worker process keeps its database work inside
`database_turn()`, short and without waiting on nodes, and every fork of the process
(os.register_at_fork, so RQ's too) first takes the same lock: a child is forked between
two transactions, never inside one. A fork waits at most FORK_WAIT_S: a database that
stopped answering mid-query must not also stop the worker from starting jobs once it is back.

    with forkguard.database_turn():
        with app.app_context():
            ...  # query, commit, db.session.remove()
"""
import logging
import os
import threading

log = logging.getLogger("ferry.forkguard")

FORK_WAIT_S = 30.0

_turn = threading.RLock()
_forking = threading.local()  # .held: this thread took _turn for the fork it is taking


def database_turn():
    """The lock a thread holds while it uses the database (a context manager, reentrant)."""
    return _turn


def _before_fork():
    _forking.held = _turn.acquire(timeout=FORK_WAIT_S)
    if not _forking.held:
        log.warning("forking while another thread has been in the database for over %g s",
                    FORK_WAIT_S)


def _after_fork():
    if getattr(_forking, "held", False):
        _forking.held = False
        _turn.release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork,
                    after_in_child=_after_fork)

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
two transactions, never inside one.

    with forkguard.database_turn():
        with app.app_context():
            ...  # query, commit, db.session.remove()
"""
import os
import threading

_turn = threading.RLock()


def database_turn():
    """The lock a thread holds while it uses the database (a context manager, reentrant)."""
    return _turn


os.register_at_fork(before=_turn.acquire, after_in_parent=_turn.release,
                    after_in_child=_turn.release)

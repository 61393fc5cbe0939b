"""A small per-process pool of open connections to compute nodes, keyed by node and pinned key.

Opening SSH and libvirt is most of what a preflight costs (a handshake and a login each); a
web or worker process that checks the same two nodes a few seconds apart can use the
connections it already has. The rules:

- A connection is lent to one caller at a time (`acquire` takes it out of the pool, `release`
  puts it back), so two callers never share one: Fabric is not thread-safe. The caller may
  run commands on it from threads of its own (the preflight probes both ways at once): each
  command is a session of its own on paramiko's transport, which is, and nothing else of
  the connection is touched once it is open.
- The key holds the pinned host key: after a re-pin the old connections are closed, never
  lent again. So is one that failed (`release(..., broken=True)`), one that is no longer alive,
  and one idle for longer than `max_idle_s`.
- After a fork (RQ forks a work horse per job) the child starts with an empty pool and leaves
  the parent's sockets alone.

The pool knows nothing about SSH or libvirt: `open(key)` makes a connection, `close(conn)`
ends it, `alive(conn)` says whether an idle one may be lent again.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable

from app.infra.bounded import within

log = logging.getLogger("ferry.pool")


@dataclass
class _Idle:
    conn: Any
    since: float


class Pool:
    """Idle connections per key; at most `per_key` idle ones are kept for each."""

    def __init__(self, open: Callable[[Hashable], Any], close: Callable[[Any], None],
                 alive: Callable[[Any], bool], per_key: int = 2, max_idle_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self._open, self._close, self._alive = open, close, alive
        self.per_key, self.max_idle_s, self._clock = per_key, max_idle_s, clock
        self._idle: dict[Hashable, list[_Idle]] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _forked(self) -> None:
        """In a forked child: forget the parent's connections (they are the parent's to close)."""
        if os.getpid() != self._pid:
            self._idle, self._lock, self._pid = {}, threading.Lock(), os.getpid()

    def acquire(self, node: Hashable, key: Hashable) -> Any:
        """An open connection for `key` (a node's identity and pinned key): an idle one that is
        still alive, else a new one. Idle connections of `node` under another key are closed."""
        self._forked()
        stale, found = [], None
        now = self._clock()
        with self._lock:
            for other in [k for k in self._idle if k[0] == node and k[1] != key]:
                stale += [i.conn for i in self._idle.pop(other)]
            idle = self._idle.get((node, key), [])
            while idle and found is None:
                entry = idle.pop()
                if now - entry.since > self.max_idle_s:
                    stale.append(entry.conn)
                else:
                    found = entry.conn
        for conn in stale:
            self._quietly_close(conn)
        if found is not None:
            done, alive = _bounded(self._alive, found, CALL_WAIT_S)
            if done and alive:
                return found
            self._quietly_close(found)
        return self._open(key)

    def release(self, node: Hashable, key: Hashable, conn: Any, broken: bool = False) -> None:
        """Give a connection back; a broken one (or one over the limit) is closed instead."""
        self._forked()
        if not broken:
            with self._lock:
                idle = self._idle.setdefault((node, key), [])
                if len(idle) < self.per_key:
                    idle.append(_Idle(conn, self._clock()))
                    return
        self._quietly_close(conn)

    def idle_count(self, node: Hashable | None = None) -> int:
        """How many idle connections the pool holds (for one node, or in all)."""
        with self._lock:
            return sum(len(v) for k, v in self._idle.items() if node is None or k[0] == node)

    def clear(self) -> None:
        """Close every idle connection (at exit, or in tests)."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for entries in idle.values():
            for entry in entries:
                self._quietly_close(entry.conn)

    def _quietly_close(self, conn) -> None:
        # A connection to a node whose daemon died may block its close (or its liveness
        # call) for good: seen hanging a preflight after a libvirtd restart. Neither may
        # hold the caller longer than CALL_WAIT_S; a stuck close is left to its thread.
        done, _ = _bounded(self._close, conn, CALL_WAIT_S)
        if not done:
            log.warning("closing a pooled connection did not return in %s s; left behind",
                        CALL_WAIT_S)


CALL_WAIT_S = 5


def _bounded(func, arg, timeout):
    """Call func(arg) with at most `timeout` s; (True, result) if it returned within timeout,
    else (False, None). An exception counts as returned, with result None."""
    ended, result, error = within(lambda: func(arg), timeout, name="pool-call")
    if error is not None:  # a connection that is already gone
        log.debug("a pooled connection call failed: %s", error)
    return ended, result

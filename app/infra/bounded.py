"""A call given at most so many seconds, in a daemon thread of its own.

A call into a node that stopped answering (a libvirt open, a close, a liveness check) may
block for good; the caller gives up after `timeout` and the thread is left to finish, and
what it returns late can still be cleaned up (`late`).
"""
from __future__ import annotations

import threading


def within(func, timeout: float, late=None, name: str = "bounded-call"):
    """Call func(); returns (ended, result, error): ended is False when it did not return or
    raise within `timeout` s. A result that comes after the caller gave up goes to late().

    >>> within(lambda: 42, 1)
    (True, 42, None)
    >>> import time
    >>> within(lambda: time.sleep(1), 0.05)
    (False, None, None)
    >>> within(lambda: 1 / 0, 1)[2].__class__.__name__
    'ZeroDivisionError'
    """
    lock, done, box = threading.Lock(), threading.Event(), {}

    def run():
        try:
            value, error = func(), None
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            value, error = None, exc
        with lock:
            given_up = box.get("given_up", False)
            box.update(result=value, error=error)
        done.set()
        if given_up and late is not None and error is None:
            late(value)

    threading.Thread(target=run, daemon=True, name=name).start()
    done.wait(timeout)
    with lock:
        if "error" not in box:
            box["given_up"] = True
            return False, None, None
    return True, box["result"], box["error"]

"""The connection pool never hangs on a dead node's connection (no node: plain objects)."""
import threading

from app.infra import pool as pool_module
from app.infra.pool import Pool


def test_it_opens_a_fresh_connection_when_the_idle_ones_liveness_call_and_close_hang(monkeypatch):
    monkeypatch.setattr(pool_module, "CALL_WAIT_S", 0.2)
    stuck = threading.Event()  # never set: a libvirt call on a connection whose peer died

    def alive(conn):
        if conn == "old":
            stuck.wait()
        return True

    def close(conn):
        if conn == "old":
            stuck.wait()

    opened = iter(["old", "new"])
    pool = Pool(lambda key: next(opened), close, alive)
    first = pool.acquire("node1", "key")
    pool.release("node1", "key", first)

    assert pool.acquire("node1", "key") == "new"  # returned, instead of waiting forever

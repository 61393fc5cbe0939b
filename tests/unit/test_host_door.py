"""The engine's door to a node's libvirt (app/infra/host.py): a node that takes a connection and
never answers costs a bounded wait, never the worker (the lab proves keepalive itself)."""
import doctest
import threading

import pytest

from app.infra import host


def test_its_examples_hold():
    assert doctest.testmod(host).failed == 0


class _Late:
    def __init__(self):
        self.closed = threading.Event()

    def close(self):
        self.closed.set()


def test_a_connection_that_opens_after_the_caller_gave_up_is_closed():
    release, late = threading.Event(), _Late()

    def opener():
        release.wait(5)
        return late

    with pytest.raises(host.HostUnknown, match="did not answer within"):
        host.bounded_open(opener, "node1", 0.05)
    release.set()
    assert late.closed.wait(5)


def test_an_error_while_opening_reaches_the_caller():
    def opener():
        raise host.HostRefused("node1: authentication failed")

    with pytest.raises(host.HostRefused, match="authentication failed"):
        host.bounded_open(opener, "node1", 5)


def test_libvirt_is_refused_in_a_process_that_forks_its_work(monkeypatch):
    import os
    monkeypatch.setattr(host, "_forbidden", {})
    host.forbid_libvirt("the worker forks a work horse per job")
    with pytest.raises(RuntimeError, match="forks a work horse"):
        host.ensure_event_loop()
    monkeypatch.setattr(host, "_forbidden", {os.getpid() + 1: "another process"})
    monkeypatch.setattr(host, "_loop_pid", os.getpid())  # this process runs its own: fine
    host.ensure_event_loop()


def test_a_child_of_a_process_that_ran_the_event_loop_says_keepalive_cannot_work(monkeypatch, caplog):
    import os
    monkeypatch.setattr(host, "_loop_pid", os.getpid() + 1)  # the parent ran it, then forked
    monkeypatch.setattr(host, "_run_event_loop", lambda: None)  # no real loop in this test
    host.ensure_event_loop()
    assert "keepalive cannot work here" in caplog.text
    caplog.clear()
    host.ensure_event_loop()  # said once
    assert caplog.text == ""

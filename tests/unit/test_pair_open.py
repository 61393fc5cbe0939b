"""A node's pair of connections (services.resources._open_pair) logs in to SSH and libvirt at
once, and a failure of either closes the other. No node: fakes stand in for the logins, which
the lab's preflight and move tests make for real."""
import threading

import pytest

from app.errors import FerryError
from app.infra.ssh import SSHError
from app.services import resources

WAIT_S = 5  # how long a fake login waits for the other: only reached when they run in turn


class Opened:
    def __init__(self, name):
        self.name, self.closed = name, False

    def close(self):
        self.closed = True


KEY = ("endpoint", 10, "/known_hosts", "libssh2")


def test_a_pair_logs_in_to_ssh_and_libvirt_at_once(monkeypatch):
    ssh_started, libvirt_started = threading.Event(), threading.Event()
    seen = {}

    def ssh_connect(endpoint, timeout):
        ssh_started.set()
        seen["ssh saw libvirt"] = libvirt_started.wait(WAIT_S)
        return Opened("ssh")

    def open_host(endpoint, known_hosts, transport):
        libvirt_started.set()
        seen["libvirt saw ssh"] = ssh_started.wait(WAIT_S)
        return Opened("libvirt")

    monkeypatch.setattr(resources.ssh, "connect", ssh_connect)
    monkeypatch.setattr(resources, "_open_host", open_host)
    pair = resources._open_pair(KEY)
    assert (pair.ssh.name, pair.libvirt.name) == ("ssh", "libvirt")
    assert seen == {"ssh saw libvirt": True, "libvirt saw ssh": True}


def test_a_failed_ssh_login_closes_the_libvirt_connection_made_beside_it(monkeypatch):
    made = []

    def ssh_connect(endpoint, timeout):
        raise SSHError("SSH to root@node9:22 failed: refused")

    def open_host(endpoint, known_hosts, transport):
        made.append(Opened("libvirt"))
        return made[-1]

    monkeypatch.setattr(resources.ssh, "connect", ssh_connect)
    monkeypatch.setattr(resources, "_open_host", open_host)
    with pytest.raises(SSHError, match="refused"):
        resources._open_pair(KEY)
    assert [c.closed for c in made] == [True]


def test_a_failed_libvirt_login_closes_the_ssh_connection_made_beside_it(monkeypatch):
    made = []

    def ssh_connect(endpoint, timeout):
        made.append(Opened("ssh"))
        return made[-1]

    def open_host(endpoint, known_hosts, transport):
        raise FerryError("libvirt on node9 did not answer")

    monkeypatch.setattr(resources.ssh, "connect", ssh_connect)
    monkeypatch.setattr(resources, "_open_host", open_host)
    with pytest.raises(FerryError, match="did not answer"):
        resources._open_pair(KEY)
    assert [c.closed for c in made] == [True]

"""Transfer TLS on the lab: what crosses the lab's bridge during a move, captured with tcpdump.

A marker string is put where the move must carry it: into a stopped server's
disk (offline) and into a running guest's memory, on its kernel command line,
which the kernel keeps in RAM (live). Moved with TLS (the lab's nodes hold
certificates from the session's CA: tests/fixtures/fleet.py), the capture of
the move holds no copy of it; moved back with FERRY_TRANSFER_SECURITY=plain,
the same capture finds it, so the test can see what it looks for.
"""
import os
import re
import secrets
import signal
import subprocess
import time

import pytest

from app import status
from app.extensions import db
from app.models import ComputeResource, MigrationTask
from tests.fixtures.fleet import migrate, sync, wait_until

pytestmark = pytest.mark.lab

MARK_BLOCK = 64 * 1024
# The kernel's capture buffer: large enough that tcpdump falling behind on a busy two-core
# machine (TCG guests beside it) drops nothing; a dropped packet could have held the marker,
# so stop() still fails on any drop. Written without -U (one write per packet made it fall
# behind: a clean-clone run dropped 84 of 13,980 packets with a 16 MiB buffer).
CAPTURE_BUFFER_KIB = 256 * 1024


def _marker():
    return "FERRYMARK" + secrets.token_hex(12).upper()


class Capture:
    """tcpdump on the lab's bridge between the nodes, SSH left out (it is encrypted anyway)."""

    def __init__(self, lab, path):
        self.path = path
        self.proc = subprocess.Popen(
            ["tcpdump", "-i", f"{lab.status['name']}-m", "-s", "0",
             "-B", str(CAPTURE_BUFFER_KIB), "-n", "-w", path, "tcp and not port 22"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        wait_until(lambda: os.path.exists(path), 10, "tcpdump to start")
        time.sleep(0.5)  # tcpdump creates its file before the socket is bound

    def stop(self) -> bytes:
        """Stop tcpdump (by its PID) and return what it captured."""
        self.proc.send_signal(signal.SIGINT)
        _, stderr = self.proc.communicate(timeout=30)
        dropped = re.search(rb"(\d+) packets dropped by kernel", stderr or b"")
        assert dropped is None or dropped.group(1) == b"0", stderr
        with open(self.path, "rb") as handle:
            return handle.read()


@pytest.fixture
def capture(lab, tmp_path):
    """capture() starts a tcpdump; its .stop() returns the bytes. Any left running is stopped."""
    started = []

    def start():
        started.append(Capture(lab, str(tmp_path / f"move-{len(started)}.pcap")))
        return started[-1]

    yield start
    for one in started:
        if one.proc.poll() is None:
            one.proc.send_signal(signal.SIGINT)
            one.proc.wait(timeout=30)


def _tls_of(app, name):
    """Whether the last task of a server moved it over TLS (from the task's result)."""
    with app.app_context():
        db.session.expire_all()
        task = db.session.scalar(db.select(MigrationTask).join(MigrationTask.server)
                                 .filter_by(name=name).order_by(MigrationTask.id.desc()))
        return (task.result or {}).get("tls")


def _captured_move(app, fleet, capture, name, to, live):
    """Move a server while tcpdump watches; returns (moved over TLS?, the captured bytes)."""
    tcpdump = capture()
    report = migrate(app, fleet, [name], to, live=live)
    seen = tcpdump.stop()
    assert report["tasks"][0]["status"] == status.MIGRATION_FINISHED, report
    return _tls_of(app, name), seen


def _assert_certificates(app, names):
    with app.app_context():
        for name in names:
            facts = db.session.scalar(db.select(ComputeResource).filter_by(name=name)).facts
            assert facts["tls"]["valid"], facts["tls"]


def _mark_disk(lab, node, path, size, marker):
    """Write 64 KiB of the marker into the last MiB of a raw disk (the guest never uses it)."""
    seek = size // MARK_BLOCK - 16
    lab.exec(node, "sh", "-c",
             'yes "$1" | head -c 65536 | dd of="$2" bs=65536 seek="$3" conv=notrunc status=none',
             "mark", marker, path, str(seek), check=True)


def test_it_copies_a_stopped_servers_disk_over_tls_where_a_capture_cannot_read_it(
        app, lab, lab_server, fleet, capture):
    made = lab_server("node1", "tls-cold", format="raw", stopped=True)
    marker = _marker()
    _mark_disk(lab, "node1", made["disk"]["path"], made["disk"]["virtual_size"], marker)
    sync(app, fleet)
    _assert_certificates(app, ["node1", "node2"])

    tls, seen = _captured_move(app, fleet, capture, "tls-cold", "node2", live=False)
    assert tls is True
    assert len(seen) > 1024 * 1024  # the copy did cross the bridge ...
    assert marker.encode() not in seen  # ... and not in clear

    app.config["TRANSFER_SECURITY"] = "plain"
    tls, seen = _captured_move(app, fleet, capture, "tls-cold", "node1", live=False)
    assert tls is False
    assert marker.encode() in seen  # the capture can see the marker when it is there


def _boot_with_marker(lab, node, name, marker):
    """Put the marker on a stopped server's kernel command line (kept in guest RAM), start it."""
    xml = lab.exec(node, "virsh", "dumpxml", "--inactive", name, check=True).stdout
    assert "</cmdline>" in xml
    xml = xml.replace("</cmdline>", f" ferry.marker={marker}</cmdline>", 1)
    path = f"/var/lib/ferry/{name}.xml"
    lab.ssh(node, f"cat > {path} <<'FERRY_XML_END'\n{xml}\nFERRY_XML_END\n", check=True)
    lab.exec(node, "virsh", "define", path, check=True)
    lab.exec(node, "rm", "-f", path)
    lab.exec(node, "virsh", "start", name, check=True)


def test_it_moves_a_running_servers_memory_over_tls_where_a_capture_cannot_read_it(
        app, lab, lab_server, fleet, capture):
    made = lab_server("node1", "tls-live", stopped=True)
    marker = _marker()
    _boot_with_marker(lab, "node1", "tls-live", marker)
    lab.wait_for_guest(made["ip"], timeout=120)
    sync(app, fleet)
    _assert_certificates(app, ["node1", "node2"])

    tls, seen = _captured_move(app, fleet, capture, "tls-live", "node2", live=True)
    assert tls is True
    assert len(seen) > 16 * 1024 * 1024  # memory and disk did cross the bridge ...
    assert marker.encode() not in seen  # ... and not in clear
    assert lab.wait_for_guest(made["ip"], timeout=60)  # and the guest runs on after it

    app.config["TRANSFER_SECURITY"] = "plain"
    tls, seen = _captured_move(app, fleet, capture, "tls-live", "node1", live=True)
    assert tls is False
    assert marker.encode() in seen  # the guest's RAM, in clear without TLS

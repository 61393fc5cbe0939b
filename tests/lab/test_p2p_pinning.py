"""The source node's SSH to the destination in a live move checks the host key Ferry pinned.

libvirt's peer-to-peer migration has the source's libvirtd open SSH to the
destination itself. Ferry installs the destination's pinned key on the source
and makes that connection use it alone (app/infra/commands/peer.py), so:

- a source whose root known_hosts holds a wrong key for the destination still
  migrates (that file is not what is trusted), and
- a pinned key the destination does not present stops the migration before
  anything is sent: the server keeps running on its source, the task fails
  saying why, nothing is left on the destination.
"""
import pytest

from app import status
from app.extensions import db
from app.infra.commands import peer
from app.models import ComputeResource
from tests.fixtures.fleet import images, migrate, sync, task_row, where

pytestmark = pytest.mark.lab


def _pinned_key(app, name):
    with app.app_context():
        return db.session.scalar(db.select(ComputeResource).filter_by(name=name)).host_key


@pytest.fixture
def wrong_root_known_hosts(app, lab, fleet):
    """node1's root known_hosts says node2 has node1's key; put back as it was afterwards."""
    path = "/root/.ssh/known_hosts"
    before = lab.exec("node1", "cat", path, check=True).stdout
    wrong = f"{lab.node('node2')['address']} {_pinned_key(app, 'node1')}\n"
    lab.exec("node1", "sh", "-c", 'printf "%s" "$1" > "$2"', "ferry-test", wrong, path,
             check=True)
    yield
    lab.exec("node1", "sh", "-c", 'printf "%s" "$1" > "$2"', "ferry-test", before, path,
             check=True)


def test_the_source_trusts_the_pinned_key_not_its_own_known_hosts(
        app, lab, lab_server, fleet, wrong_root_known_hosts):
    lab_server("node1", "pin-ok")
    sync(app, fleet)
    # root's own ssh on node1 now refuses node2: the setup does what the test needs
    plain = lab.exec("node1", "ssh", "-o", "BatchMode=yes", lab.node("node2")["address"], "true")
    assert plain.returncode != 0 and "host key" in (plain.stderr + plain.stdout).lower(), plain

    report = migrate(app, fleet, ["pin-ok"], "node2")

    task = report["tasks"][0]
    assert task["status"] == status.MIGRATION_FINISHED, task
    assert where(lab, "pin-ok") == {"node2": "running"}
    name = peer.pin_name(lab.node("node2")["address"], 22, _pinned_key(app, "node2"))
    pinned = lab.exec("node1", "cat", peer.known_hosts_path(name), check=True).stdout
    assert pinned == f"{peer.HOST_KEY_ALIAS} {_pinned_key(app, 'node2')}\n"


def test_a_destination_that_does_not_present_the_pinned_key_is_not_migrated_to(
        app, lab, lab_server, fleet, monkeypatch):
    made = lab_server("node1", "pin-bad")
    sync(app, fleet)
    before = images(lab, "node2")
    # Ferry's own connections keep node2's true key; the source is given another one to expect
    # (node1's), as if node2's address now answered with a different machine.
    real_install, other = peer.install, _pinned_key(app, "node1")
    monkeypatch.setattr(peer, "install", lambda name, host_key: real_install(name, other))

    report = migrate(app, fleet, ["pin-bad"], "node2")

    task = report["tasks"][0]
    assert task["status"] == status.MIGRATION_FAILED, task
    row = task_row(app, task["task"])
    assert "keeps running on node1" in row["error"], row["error"]
    assert "did not present the host key Ferry pinned" in row["error"], row["error"]
    assert where(lab, "pin-bad") == {"node1": "running"}
    assert images(lab, "node2") == before  # the pre-created disks were removed again
    assert made["name"] not in lab.exec("node2", "virsh", "list", "--all", "--name").stdout

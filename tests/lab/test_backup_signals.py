"""Backup warnings from what a real node shows: a libvirt checkpoint made with
`virsh checkpoint-create-as` and a file in the node's backup directory named after the server
each make the preflight warn, naming them; a server with neither gets no backup warning.

Needs node1 and node2 only: a lab already up with them is used as it is (so a helper's own
two-node lab serves), else the session's lab is brought up as usual.
"""

import pytest

from app import status
from app.services import migration
from tests.fixtures.fleet import image_info, make_request, migrate, sync, where
from tests.fixtures.lab import Lab, bring_up

pytestmark = pytest.mark.lab
BACKUP_DIR = "/var/lib/ferry/backups"
BACKUP_CHECKS = ("backups", "checkpoints", "backup-files", "backup-restore-space")


@pytest.fixture(scope="module")
def lab():
    """The lab, with node1 and node2 up (brought up with three nodes when it is not up)."""
    the_lab = Lab()
    names = {n["name"] for n in the_lab.status.get("nodes", [])}
    if the_lab.status.get("up") and {"node1", "node2"} <= names:
        return the_lab
    return bring_up()


@pytest.fixture
def backup_file(lab):
    """backup_file(node, name): a 1 MiB file in the node's backup directory, removed afterwards."""
    made = []

    def make(node, name):
        path = f"{BACKUP_DIR}/{name}"
        made.append((node, path))
        lab.exec(node, "dd", "if=/dev/zero", f"of={path}", "bs=1M", "count=1", check=True)
        return path

    yield make
    for node, path in made:
        lab.exec(node, "rm", "-f", "--", path, check=True)


def backup_results(app, fleet, name, **options):
    """{check name: (status, message)} of the backup checks of a dry run moving `name` from
    node1 to node2 offline."""
    with app.app_context():
        report = migration.dry_run(make_request(app, fleet, [name], "node2", live=False,
                                                **options))
    found = {r["name"]: (r["status"], r["message"]) for r in report["results"]
             if r["name"] in BACKUP_CHECKS}
    assert not [r for r in report["results"] if r["name"] == "reachable"], report["results"]
    return found


def test_backup_warnings_fire_from_a_real_checkpoint_and_a_backup_file_and_only_then(
        app, lab, lab_server, fleet, backup_file):
    lab_server("node1", "bkp-ckpt", format="qcow2", memory=128)
    lab.exec("node1", "virsh", "checkpoint-create-as", "bkp-ckpt", "nightly-1", check=True)
    lab.exec("node1", "virsh", "destroy", "bkp-ckpt", check=True)  # an offline move: stopped
    listed = lab.exec("node1", "virsh", "checkpoint-list", "--name", "bkp-ckpt", check=True)
    assert listed.stdout.split() == ["nightly-1"]  # the checkpoint outlives the stop
    lab_server("node1", "bkp-file", format="qcow2", stopped=True)
    backup_file("node1", "bkp-file-2026-11-29.qcow2")
    lab_server("node1", "bkp-none", format="qcow2", stopped=True)
    backup_file("node1", "bkp-nonexistent.qcow2")  # named after no server of node1
    sync(app, {"node1": fleet["node1"]})

    for options in ({}, {"convert_to": status.STORAGE_FILE_RAW}):
        checkpoint = backup_results(app, fleet, "bkp-ckpt", **options)
        assert checkpoint["checkpoints"][0] == "warn", checkpoint
        assert "nightly-1" in checkpoint["checkpoints"][1] and "node1" in checkpoint["checkpoints"][1]
        assert checkpoint["backup-files"][0] == "pass" and checkpoint["backups"][0] == "pass"

        files = backup_results(app, fleet, "bkp-file", **options)
        assert files["backup-files"][0] == "warn", files
        assert "bkp-file-2026-11-29.qcow2" in files["backup-files"][1]
        assert files["checkpoints"][0] == "pass" and files["backups"][0] == "pass"

        neither = backup_results(app, fleet, "bkp-none", **options)
        assert {name: result[0] for name, result in neither.items()} == {
            name: "pass" for name in BACKUP_CHECKS}, neither

    # Once gone from the node it warns no more (the sync changes node1's facts, so the
    # preflight asks the node again instead of reusing its last measurement).
    lab.exec("node1", "rm", "-f", "--", f"{BACKUP_DIR}/bkp-file-2026-11-29.qcow2", check=True)
    sync(app, {"node1": fleet["node1"]})
    assert backup_results(app, fleet, "bkp-file")["backup-files"][0] == "pass"

    # What the checkpoint warning says: moved by Ferry (warnings acknowledged), the server
    # arrives without its checkpoint or the disk's bitmap.
    report = migrate(app, fleet, ["bkp-ckpt"], "node2", live=False)
    assert report["status"] == status.MIGRATION_FINISHED, report
    assert where(lab, "bkp-ckpt") == {"node2": "shut off"}
    listed = lab.exec("node2", "virsh", "checkpoint-list", "--name", "bkp-ckpt", check=True)
    assert listed.stdout.split() == []
    info = image_info(lab, "node2", "/var/lib/libvirt/images/bkp-ckpt.qcow2")
    assert not info.get("format-specific", {}).get("data", {}).get("bitmaps")


def test_the_backup_directory_free_space_and_files_are_node_facts(app, lab, fleet, backup_file):
    backup_file("node2", "some-server.qcow2")
    sync(app, {"node2": fleet["node2"]})
    with app.app_context():
        from app.extensions import db
        from app.models import ComputeResource
        facts = db.session.get(ComputeResource, fleet["node2"]).facts
    df = lab.exec("node2", "df", "-P", "-B1", "--", BACKUP_DIR, check=True).stdout
    available = int(df.splitlines()[1].split()[3])
    assert facts["backup_dir"]["path"] == BACKUP_DIR
    assert abs(facts["backup_dir"]["free_bytes"] - available) < 64 << 20  # the same filesystem
    assert {"name": "some-server.qcow2", "size": 1 << 20} in facts["backup_dir"]["files"]
    assert facts["backup_dir"]["files_cut"] is False
    assert isinstance(facts["checkpoints"], dict)

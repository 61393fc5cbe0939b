"""The migration engine against the live lab: live, live with conversion, offline with conversion
and IP change, the refusals, the group limit, cancel.

Every test leaves the lab as it found it: servers it made are removed by the
lab_server fixture wherever they ended up, overrides and blocks are undone.
"""
import json

import pytest

from app import status
from app.extensions import db
from app.models import IpAddress, IpBlock, MigrationTask, Server
from app.services import inventory, migration, resources

pytestmark = pytest.mark.lab


@pytest.fixture
def fleet(app, lab):
    """The lab's nodes registered (keys pinned), IP blocks assigned, inventory synced; name -> id."""
    ids = {}
    with app.app_context():
        for node in lab.status["nodes"]:
            resource = resources.add(node["name"], node["address"], node["user"],
                                     lab.status["ssh_key"], node["port"],
                                     storage_tags=node["storage_tags"])
            ids[node["name"]] = resource.id
        for spec in lab.status["ip_blocks"]:
            block = IpBlock(name=spec["name"], cidr=spec["cidr"], gateway=spec["gateway"])
            block.compute_resources = [resources.get(n) for n in spec["nodes"]]
            db.session.add(block)
        db.session.commit()
    return ids


def sync(app, fleet):
    """Sync every node in-process."""
    with app.app_context():
        for rid in fleet.values():
            inventory.sync(rid)


def server_id(app, name):
    """The inventory id of a server by name."""
    with app.app_context():
        return db.session.scalar(db.select(Server).filter_by(name=name)).id


def give_address(app, name, address, block_name="guest-a"):
    """Record in the inventory that a server holds an address of a block."""
    with app.app_context():
        block = db.session.scalar(db.select(IpBlock).filter_by(name=block_name))
        server = db.session.scalar(db.select(Server).filter_by(name=name))
        db.session.add(IpAddress(block=block, address=address, server=server))
        db.session.commit()


def migrate(app, fleet, names, to, **options):
    """Start a group and run it in this process; returns the group's report."""
    with app.app_context():
        request = migration.Request(
            server_ids=tuple(server_id(app, n) for n in names), destination_id=fleet[to],
            acknowledge_warnings=True, **options)
        group = migration.start_group(request, enqueue=False)
        if group.status == status.MIGRATION_RUNNING:
            migration.run_group(group.id)
        db.session.expire_all()
        return migration.group_report(db.session.get(type(group), group.id))


def where(lab, name):
    """Nodes on which the lab sees a domain of that name, with its state."""
    return {s["node"]: s["state"] for s in lab.servers() if s["name"] == name}


def test_it_moves_a_dirtying_server_live_and_keeps_its_ip(app, lab, lab_server, fleet):
    guest = lab_server("node1", "live-dirty", memory=256, dirty_rate=20, dirty_size=64)
    lab.wait_for_guest(guest["ip"], 60)
    sync(app, fleet)

    report = migrate(app, fleet, ["live-dirty"], "node2")

    task = report["tasks"][0]
    assert task["status"] == status.MIGRATION_FINISHED, task
    assert where(lab, "live-dirty") == {"node2": "running"}
    assert lab.ping(guest["ip"], count=3, timeout=2)
    assert task["downtime_ms"] is not None and task["downtime_ms"] >= 0
    assert task["bytes"] > 0 and task["total_ms"] > 0
    with app.app_context():
        row = db.session.get(MigrationTask, task["task"])
        assert len(row.progress["history"]) >= 2
        assert row.server.compute_resource.name == "node2"
        kinds = [e.kind for e in row.events]
        assert "downtime" in kinds and "finished" in kinds


def test_it_converts_qcow2_to_raw_during_a_live_move(app, lab, lab_server, fleet):
    guest = lab_server("node1", "live-convert", format="qcow2")
    lab.wait_for_guest(guest["ip"], 60)
    sync(app, fleet)

    report = migrate(app, fleet, ["live-convert"], "node2", convert_to=status.STORAGE_FILE_RAW)

    assert report["tasks"][0]["status"] == status.MIGRATION_FINISHED, report["tasks"][0]
    dumped = lab.exec("node2", "virsh", "dumpxml", "live-convert", check=True).stdout
    assert "type='raw'" in dumped and guest["disk"]["path"] not in dumped
    raw_path = guest["disk"]["path"].rsplit(".", 1)[0] + ".raw"
    info = json.loads(lab.exec("node2", "qemu-img", "info", "-U", "--output=json", raw_path,
                               check=True).stdout)
    assert info["format"] == "raw"
    assert lab.exec("node1", "test", "-e", guest["disk"]["path"]).returncode != 0
    assert lab.guest_status(guest["ip"])["seed_md5_ok"] is True


def test_it_moves_a_stopped_server_offline_converting_and_changing_its_ip(
        app, lab, lab_server, fleet):
    guest = lab_server("node1", "cold-move", format="qcow2", stopped=True)
    sync(app, fleet)
    give_address(app, "cold-move", guest["ip"])

    report = migrate(app, fleet, ["cold-move"], "node3", live=False, preserve_ip=False,
                     convert_to=status.STORAGE_FILE_RAW)

    task = report["tasks"][0]
    assert task["status"] == status.MIGRATION_FINISHED, task
    assert where(lab, "cold-move") == {"node3": "shut off"}
    assert lab.exec("node1", "test", "-e", guest["disk"]["path"]).returncode != 0
    leftovers = lab.exec("node3", "sh", "-c", "ls -a /var/lib/libvirt/images | grep -c part || true")
    assert leftovers.stdout.strip() == "0"
    with app.app_context():
        server = db.session.scalar(db.select(Server).filter_by(name="cold-move"))
        new = [a.address for a in server.ip_addresses]
        old = db.session.scalar(db.select(IpAddress).filter_by(address=guest["ip"]))
        assert new and new[0] != guest["ip"] and old.server_id is None
        assert server.disks[0].format == "raw"
    lab.exec("node3", "virsh", "start", "cold-move", check=True)
    lab.wait_for_guest(new[0], 90)
    assert lab.guest_status(new[0])["seed_md5_ok"] is True
    assert not lab.ping(guest["ip"], count=1, timeout=1)

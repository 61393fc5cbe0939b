"""Inventory sync of the lab's LVM node: block disks read as LVM or thin LVM from lvs."""
import pytest

from app import status
from app.errors import FerryError
from app.extensions import db
from app.models import ComputeResource, Disk, Server
from app.services import inventory, resources

pytestmark = pytest.mark.lab
GIB = 1 << 30


@pytest.fixture
def lvm_node(app, lvm_lab):
    """The LVM node and node1 registered as compute resources (host keys pinned); name -> id."""
    ids = {}
    with app.app_context():
        for name in ("lvm1", "node1"):
            node = lvm_lab.node(name)
            ids[name] = resources.add(name, node["address"], node["user"],
                                      lvm_lab.status["ssh_key"], node["port"]).id
    return ids


def disks_by_server(app):
    """server name -> (resource name, [(storage type, format, path, virtual size, allocation)])."""
    with app.app_context():
        return {s.name: (s.compute_resource.name,
                         [(d.storage_type, d.format, d.path, d.virtual_size, d.allocation)
                          for d in s.disks])
                for s in db.session.scalars(db.select(Server))}


def test_it_reads_lvm_and_thin_lvm_servers_with_their_sizes(app, lvm_lab, lab_server, lvm_node):
    lab_server("lvm1", "sync-thick", stopped=True, storage="lvm")
    lab_server("lvm1", "sync-thin", stopped=True, storage="thinlvm")
    lab_server("lvm1", "sync-file", stopped=True, format="qcow2")

    with app.app_context():
        summary = inventory.sync(lvm_node["lvm1"])
    assert summary["servers"] >= 3

    found = disks_by_server(app)
    assert found["sync-thick"] == ("lvm1", [(status.STORAGE_LVM, "raw", "/dev/ferry/sync-thick",
                                            GIB, GIB)])
    resource, [(kind, fmt, path, size, allocation)] = found["sync-thin"]
    assert (resource, kind, fmt, path, size) == ("lvm1", status.STORAGE_THINLVM, "raw",
                                                 "/dev/ferry/sync-thin", GIB)
    assert 0 < allocation < GIB // 10  # thin: the seed and metadata, not the whole volume
    assert found["sync-file"][1][0][0] == status.STORAGE_FILE_QCOW2
    with app.app_context():
        facts = db.session.get(ComputeResource, lvm_node["lvm1"]).facts
    assert {p["name"]: p["type"] for p in facts["storage_pools"]}["ferry"] == "logical"
    [group] = facts["lvm"]["volume_groups"]
    assert group["name"] == "ferry" and 0 < group["free"] < group["size"]
    [pool] = facts["lvm"]["thin_pools"]
    assert (pool["vg"], pool["name"], pool["size"]) == ("ferry", "thinpool", 6 * GIB)
    assert 0 < pool["data_percent"] < 100 and 0 < pool["metadata_percent"] < 100


def test_it_refuses_a_node_whose_lvs_prints_something_else_and_records_nothing(
        app, lvm_lab, lab_server, lvm_node):
    lab_server("lvm1", "sync-odd", stopped=True, storage="thinlvm")
    # /usr/local/sbin comes first on root's PATH over SSH: a node whose lvs misbehaves.
    fake = "/usr/local/sbin/lvs"
    lvm_lab.exec("lvm1", "sh", "-c", 'printf "#!/bin/sh\\necho \'{\\"report\\": 7}\'\\n" > "$1"'
                 ' && chmod 755 "$1"', "fake", fake, check=True)
    try:
        with app.app_context(), pytest.raises(FerryError, match=r"lvm1: lvs printed JSON "
                                                                r"without a report list"):
            inventory.sync(lvm_node["lvm1"])
        with app.app_context():
            assert db.session.scalar(db.select(db.func.count(Disk.id))) == 0
            assert db.session.scalar(db.select(db.func.count(Server.id))) == 0
            lvm1 = db.session.get(ComputeResource, lvm_node["lvm1"])
            assert lvm1.status != status.RESOURCE_UNREACHABLE and lvm1.facts in (None, {})
            inventory.sync(lvm_node["node1"])  # the other node is not affected
            node1 = db.session.get(ComputeResource, lvm_node["node1"])
            assert node1.last_synced_at
            assert node1.facts["lvm"] == {"volume_groups": [], "thin_pools": []}  # no lvm2
    finally:
        lvm_lab.exec("lvm1", "rm", "-f", fake, check=True)
    with app.app_context():
        inventory.sync(lvm_node["lvm1"])
    assert disks_by_server(app)["sync-odd"][1][0][0] == status.STORAGE_THINLVM

"""Preflight refusals against the live lab: each fault made real on a node, each its own reason.

One running server (on node1, holding an address of guest-b, the block only
node3 has) serves every case; each case breaks one thing for real (a libvirt
snapshot, an iptables block, a bind-mounted os-release or cpuinfo, the
inventory's tags, blocks or the asked conversion), starts a group, checks
that only that check failed and that nothing moved, then puts it back.
"""
import ipaddress

import pytest

from app import status
from app.extensions import db
from app.models import IpBlock, Server
from app.services import migration
from tests.fixtures.fleet import (give_address, images, make_request, migrate, preflight_results,
                                  sync, where)
from tests.fixtures.lab import ROOT

pytestmark = pytest.mark.lab

NAME = "refusal-steady"


@pytest.fixture(scope="module")
def steady(lab):
    """The module's running server on node1, with an address of guest-b (node3's block)."""
    block = next(b for b in lab.status["ip_blocks"] if b["name"] == "guest-b")
    address = str(list(ipaddress.ip_network(block["cidr"]).hosts())[-2])
    guest = lab.mkserver("node1", NAME, memory=128, ip=f"{address}/24")
    yield guest
    lab.rmserver(NAME)


def _snapshot(lab, app, tmp_path):
    lab.exec("node1", "virsh", "snapshot-create-as", NAME, "before-upgrade", check=True)
    return lambda: lab.exec("node1", "virsh", "snapshot-delete", NAME, "before-upgrade",
                            check=True)


def _port_blocked(lab, app, tmp_path):
    lab.cli("block", "node3", "49152")
    return lambda: lab.cli("unblock", "node3", "49152")


def _older_os(lab, app, tmp_path):
    lab.cli("override", "node3", "os-release", f"{ROOT}/lab/fixtures/os-release-debian11")
    return lambda: lab.cli("override", "node3", "os-release", "--clear")


def _other_cpu_vendor(lab, app, tmp_path):
    # The host's own cpuinfo with the other vendor: a different CPU identity on any machine.
    with open("/proc/cpuinfo") as handle:
        text = handle.read()
    ours, theirs = (("AuthenticAMD", "GenuineIntel") if "AuthenticAMD" in text
                    else ("GenuineIntel", "AuthenticAMD"))
    fake = tmp_path / "cpuinfo"
    fake.write_text(text.replace(ours, theirs))
    lab.cli("override", "node3", "cpuinfo", str(fake))
    return lambda: lab.cli("override", "node3", "cpuinfo", "--clear")


def _storage_tag_missing(lab, app, tmp_path):
    with app.app_context():
        server = db.session.scalar(db.select(Server).filter_by(name=NAME))
        server.disks[0].storage_tag = "nvme"  # the lab's nodes have ssd and hdd only
        db.session.commit()
    return lambda: None


def _nothing(lab, app, tmp_path):
    return lambda: None


# (case, fault, destination, options, the checks that must fail, words of the reason)
CASES = [
    ("snapshot", _snapshot, "node3", {}, {"snapshots"}, "1 snapshot"),
    ("port-49152-blocked", _port_blocked, "node3", {}, {"ports"}, "49152"),
    ("older-os", _older_os, "node3", {}, {"os-version"}, "older than"),
    ("cpu-vendor", _other_cpu_vendor, "node3", {}, {"cpu-vendor"}, "different CPU vendors"),
    ("storage-tag", _storage_tag_missing, "node3", {}, {"storage-tags"}, "nvme"),
    ("ip-block", _nothing, "node2", {}, {"ip-addresses"}, "guest-b is not assigned to node2"),
    # The engine moves LVM offline only (disk-types): a live move to LVM is refused from the
    # database alone, before any node is asked (so the node checks, lvm-space among them, do
    # not run).
    ("live-to-lvm", _nothing, "node3", {"convert_to": status.STORAGE_LVM},
     {"live-conversion", "disk-types"}, "cannot be converted to lvm live"),
]


@pytest.fixture
def registered(app, lab, fleet, steady):
    """The fleet synced, with the server recorded as holding its guest-b address."""
    sync(app, {"node1": fleet["node1"]})
    give_address(app, NAME, steady["ip"], block_name="guest-b")
    return fleet


def test_it_passes_preflight_for_the_same_server_without_a_fault(app, lab, registered):
    with app.app_context():
        report = migration.dry_run(make_request(app, registered, [NAME], "node3"))
    failed = [r for r in report["results"] if r["status"] == "fail"]
    assert failed == [], failed


@pytest.mark.parametrize("case,fault,to,options,failing,reason", CASES, ids=[c[0] for c in CASES])
def test_it_refuses_with_its_own_reason_and_moves_nothing(app, lab, registered, tmp_path, case,
                                                          fault, to, options, failing, reason):
    undo = fault(lab, app, tmp_path)
    try:
        if case == "snapshot":
            sync(app, {"node1": registered["node1"]})  # the inventory counts snapshots
        report = migrate(app, registered, [NAME], to, **options)
    finally:
        undo()

    task = report["tasks"][0]
    assert report["status"] == status.MIGRATION_FAILED and task["status"] == status.MIGRATION_FAILED
    assert task["error"].startswith("Preflight failed:") and reason in task["error"], task["error"]
    checks = preflight_results(app, task["task"])
    assert {name for name, result in checks.items() if result == "fail"} == failing, checks
    assert [e["kind"] for e in task["events"]] == ["refused"]
    assert task["started_at"] is None
    assert where(lab, NAME) == {"node1": "running"}
    assert not {f for f in images(lab, to) if NAME in f}
    with app.app_context():
        block = db.session.scalar(db.select(IpBlock).filter_by(name="guest-b"))
        assert [a.server.name for a in block.addresses] == [NAME]  # nothing reallocated

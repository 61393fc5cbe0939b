"""Offline conversions into and out of LVM and thin LVM on the lab's LVM node (issue 12).

A stopped server with the guest's seeded image moves through file QCOW2 -> LVM -> file raw,
file raw -> thin LVM -> file QCOW2, file raw -> LVM -> file QCOW2 and file QCOW2 -> thin LVM
-> file raw between node1 and lvm1 (every ordered pair of a file type and an LVM type);
after every hop its disk is `qemu-img compare`-equal to a reference copy of the original,
the destination defines it with the right disk type, nothing of it is left on the source,
and a thin volume stays thin.
A copy into LVM killed half-way leaves the volume group as it was and the server on node1.
cv-thin's hops and the killed copy go over TLS (the default); the other hops in plain, since
TLS inside the TCG VM costs most of a hop out of LVM (tests/lab/test_tls proves the encryption).

LVM -> thin LVM and back need two LVM nodes: tests/lab/test_lvm_two_nodes.py (lvm1 and
lvm2). LVM -> LVM and thin -> thin are proved only by the fast tests
(tests/unit/test_engine_lvm.py). The matrix and its timings go to
bench/results/storage-matrix.md.

Needs node1 and lvm1: a lab already up with them is used as it is (a helper's own lab with
--lvm-node serves), else the session's lab is brought up with its LVM node.
"""
import json
import os
import shlex
import threading
import time

import pytest

from app import status
from tests.fixtures.fleet import ROOT, image_info, images, migrate, sync, where
from tests.fixtures.lab import Lab, bring_up

pytestmark = pytest.mark.lab
# Every read of a disk inside the TCG VM is slow (a 1 GiB volume took 30-40 s to compare and
# as long to copy out), so the servers here have 256 MiB disks: the seeded image fits, and
# a thin volume of it stays well under the 10 % checked below.
DISK = "256M"
DISK_BYTES = 256 << 20
EXTENT = 4 << 20  # lvm1's volume group's extent size
TLS_SERVERS = {"cv-thin"}  # whose hops copy over TLS (the default); the others in plain
ODD_BYTES = DISK_BYTES + (1 << 20) + 512  # a disk of no whole number of extents
REF_DIR = "/var/lib/ferry/ref"
MATRIX_PATH = os.path.join(ROOT, "bench", "results", "storage-matrix.md")
ROWS = []  # one per hop: what the matrix file shows


@pytest.fixture(scope="module")
def lab():
    """The lab with node1 and lvm1 (brought up with its LVM node when they are not up)."""
    the_lab = Lab()
    names = {n["name"] for n in the_lab.status.get("nodes", [])}
    if the_lab.status.get("up") and {"node1", "lvm1"} <= names:
        return the_lab
    return bring_up("--lvm-node", timeout=1800, what="the LVM node")


@pytest.fixture(scope="module", autouse=True)
def matrix():
    """Write what the module's hops measured to bench/results/storage-matrix.md."""
    yield
    if ROWS:
        write_matrix(ROWS)


def write_matrix(rows):
    lines = ["# Storage conversion matrix (offline moves, issue 12)", "",
             "Written by tests/lab/test_lvm_conversions.py on the lab: a stopped 256 MiB server"
             " (the guest's seeded ext4 image) between node1 (a namespace node, file disks) and"
             " lvm1 (the LVM node, a Debian VM under TCG: VG `ferry`, thin pool"
             " `ferry/thinpool`). Every hop: `qemu-img compare` equal to a reference copy of the"
             " original, the destination's disk type checked, nothing left on the source.", "",
             "| hop | from | to | transfer | outcome | total s | copy s | compare s | thin data % |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append("| {hop} | {src} | {dst} | {transfer} | {outcome} | {total} | {copy} | {verify}"
                     " | {thin} |".format(**row))
    between = any(r["src"].startswith("lvm") and r["dst"].startswith("lvm") for r in rows)
    lines += ["", ("LVM -> thin LVM and thin LVM -> LVM run between lvm1 and lvm2 (two LVM nodes,"
                   " tests/lab/test_lvm_two_nodes.py); LVM -> LVM and thin -> thin" if between
                   else "Not in this run: LVM -> thin LVM and thin LVM -> LVM (between lvm1 and"
                   " lvm2, tests/lab/test_lvm_two_nodes.py); LVM -> LVM and thin -> thin")
              + " are proved by the fast tests only (tests/unit/test_engine_lvm.py, on the fake"
              " cluster), like every failure and crash boundary of these steps.",
              f"", f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."]
    os.makedirs(os.path.dirname(MATRIX_PATH), exist_ok=True)
    with open(MATRIX_PATH, "w") as handle:
        handle.write("\n".join(lines) + "\n")


def lvs(lab, node="lvm1"):
    """{lv_name: (segtype, size, data percent)} of every volume of an LVM node."""
    proc = lab.exec(node, "lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
                    "-o", "lv_name,segtype,lv_size,data_percent", check=True)
    return {r["lv_name"]: (r["segtype"], int(r["lv_size"]), r["data_percent"])
            for r in json.loads(proc.stdout)["report"][0]["lv"]}


def keep_reference(lab, path, name, source="node1", copies=("lvm1",)):
    """A QCOW2 copy of the original disk in REF_DIR on `source` and on each of `copies`
    (every node a hop lands on compares with it)."""
    ref = f"{REF_DIR}/{name}.qcow2"
    lab.exec(source, "mkdir", "-p", REF_DIR, check=True)
    lab.exec(source, "qemu-img", "convert", "-O", "qcow2", path, ref, check=True, timeout=600)
    remote = f"mkdir -p {shlex.quote(REF_DIR)} && cat > {shlex.quote(ref)}"
    for node in copies:
        address = lab.node(node)["address"]
        proc = lab.ssh(source, f"ssh -o BatchMode=yes {shlex.quote(address)} "
                               f"{shlex.quote(remote)} < {shlex.quote(ref)}", timeout=600)
        assert proc.returncode == 0, proc.stderr
    return ref


def assert_same_as_reference(lab, node, ref, path, fmt):
    same = lab.exec(node, "qemu-img", "compare", "-f", "qcow2", "-F", fmt, ref, path,
                    timeout=900)
    assert same.returncode == 0, f"{node}: {path} differs from the original: {same.stdout}" \
                                 f"{same.stderr}"


def disk_xml(lab, node, name):
    """(disk type, source path, driver type) of the server's disk as the node defines it."""
    import xml.etree.ElementTree as ET
    root = ET.fromstring(lab.exec(node, "virsh", "dumpxml", "--inactive", name,
                                  check=True).stdout)
    disk = root.find("./devices/disk[@device='disk']")
    source = disk.find("source")
    return (disk.get("type"), source.get("dev") or source.get("file"),
            disk.find("driver").get("type"))


def hop(app, lab, fleet, name, src, dst, convert_to, ref, expect, was, lv_size=DISK_BYTES):
    """Move `name` (on storage type `was`) from src to dst converting to `convert_to`; check
    and record the hop (a volume made on an LVM node is `lv_size` bytes)."""
    sync(app, {n: fleet[n] for n in (src, dst)})
    # TLS inside the TCG VM runs at about 10 MB/s: a hop out of LVM took 80 s with it and 24 s
    # without. test_tls proves the encryption; here one server's hops keep it (LVM with TLS
    # both ways) and the others copy in plain.
    app.config["TRANSFER_SECURITY"] = "auto" if name in TLS_SERVERS else "plain"
    report = migrate(app, fleet, [name], dst, live=False, convert_to=convert_to)
    [task] = report["tasks"]
    assert report["status"] == status.MIGRATION_FINISHED, (task["error"], task["events"][-5:])
    assert where(lab, name) == {dst: "shut off"}
    kind, path, fmt = disk_xml(lab, dst, name)
    assert (kind, path, fmt) == expect
    assert_same_as_reference(lab, dst, ref, path, fmt)
    thin = ""
    if src.startswith("lvm"):
        assert not [lv for lv in lvs(lab, src) if lv.startswith(name)], lvs(lab, src)
    else:
        assert not [f for f in images(lab, src) if name in f], images(lab, src)
    if dst.startswith("lvm"):
        assert not [lv for lv in lvs(lab, dst) if ".ferry-" in lv]  # no temporary volume left
        segtype, size, data_percent = lvs(lab, dst)[name]
        assert size == lv_size and segtype == ("thin" if convert_to == "thinlvm" else "linear")
        if segtype == "thin":
            thin = float(data_percent)
            assert thin < 10.0, f"the thin volume holds {thin}% of its virtual size"
    else:
        assert not [f for f in images(lab, dst) if ".part" in f]
    phases = task["phases"] or {}
    ROWS.append({"hop": f"{was} → {convert_to} ({name})", "src": src, "dst": dst, "outcome": "ok",
                 "transfer": "TLS" if name in TLS_SERVERS else "plain",
                 "total": _s(task["total_ms"]), "copy": _s(phases.get("copy_vda_ms")),
                 "verify": _s(phases.get("verify_vda_ms")), "thin": thin})


def _s(ms):
    return f"{ms / 1000:.1f}" if ms is not None else ""


@pytest.mark.parametrize("name, start_format, first, back, back_format", [
    ("cv-thick", "qcow2", "lvm", "file-raw", "raw"),
    ("cv-thin", "raw", "thinlvm", "file-qcow2", "qcow2"),
    ("cv-thick2", "raw", "lvm", "file-qcow2", "qcow2"),
    ("cv-thin2", "qcow2", "thinlvm", "file-raw", "raw"),
])
def test_a_stopped_server_goes_into_lvm_and_back_out_unchanged(
        app, lab, lab_server, fleet, name, start_format, first, back, back_format):
    server = lab_server("node1", name, stopped=True, format=start_format, disk=DISK)
    path = server["disk"]["path"]
    ref = keep_reference(lab, path, name)
    try:
        hop(app, lab, fleet, name, "node1", "lvm1", first, ref,
            ("block", f"/dev/ferry/{name}", "raw"), f"file-{start_format}")
        hop(app, lab, fleet, name, "lvm1", "node1", back, ref,
            ("file", f"/var/lib/libvirt/images/{name}.{back_format}", back_format), first)
    finally:
        for node in ("node1", "lvm1"):
            lab.exec(node, "rm", "-f", "--", ref)


def test_a_disk_of_no_whole_number_of_extents_goes_into_lvm_and_back_out_at_its_size(
        app, lab, lab_server, fleet):
    """lvm rounds the new volume up to whole extents: its tail is zeroed before the copy (the
    compare reads the whole volume), the definition slices it to the disk's size (the guest
    sees the size it had), and the way back out exports only that slice."""
    name = "cv-odd"
    server = lab_server("node1", name, stopped=True, format="qcow2", disk=DISK)
    path = server["disk"]["path"]
    lab.exec("node1", "qemu-img", "resize", "-f", "qcow2", path, str(ODD_BYTES), check=True)
    lab.exec("node1", "virsh", "pool-refresh", "default", check=True)
    ref = keep_reference(lab, path, name)
    lv_size = -(-ODD_BYTES // EXTENT) * EXTENT
    dirty_free_extents(lab, lv_size)
    try:
        hop(app, lab, fleet, name, "node1", "lvm1", "lvm", ref,
            ("block", f"/dev/ferry/{name}", "raw"), "file-qcow2 of odd size", lv_size=lv_size)
        assert slices(lab, "lvm1", name) == [("storage", "0", str(ODD_BYTES))]
        assert recorded_size(app, fleet, name, "lvm1") == ODD_BYTES  # not the volume's
        hop(app, lab, fleet, name, "lvm1", "node1", "file-raw", ref,
            ("file", f"/var/lib/libvirt/images/{name}.raw", "raw"), "lvm (sliced)")
        assert image_info(lab, "node1", f"/var/lib/libvirt/images/{name}.raw")[
            "virtual-size"] == ODD_BYTES
        assert slices(lab, "node1", name) == []
    finally:
        for node in ("node1", "lvm1"):
            lab.exec(node, "rm", "-f", "--", ref)


def dirty_free_extents(lab, size):
    """Leave random bytes in the last extent of the volume group's first `size` free bytes,
    where the move's new volume goes (lvm allocates the first free extents): a fresh lab's
    extents read as zeros, a used node's hold old data, and lvcreate zeroes none of them."""
    lab.exec("lvm1", "lvcreate", "--yes", "-n", "cv-dirt", "-L", f"{size}b", "ferry", check=True)
    try:
        lab.exec("lvm1", "dd", "if=/dev/urandom", "of=/dev/ferry/cv-dirt", "bs=1M",
                 f"seek={size // (1 << 20) - EXTENT // (1 << 20)}", f"count={EXTENT >> 20}",
                 "conv=fsync", "status=none", check=True)
    finally:
        lab.exec("lvm1", "lvremove", "--yes", "ferry/cv-dirt", check=True)


def recorded_size(app, fleet, name, node):
    """The virtual size the inventory records for the server's disk after a sync of node."""
    from app.extensions import db
    from app.models import Server
    sync(app, {node: fleet[node]})
    with app.app_context():
        [disk] = db.session.scalar(db.select(Server).filter_by(name=name)).disks
        return disk.virtual_size


def slices(lab, node, name):
    """The (type, offset, size) of each slice of the server's disk as the node defines it."""
    import xml.etree.ElementTree as ET
    root = ET.fromstring(lab.exec(node, "virsh", "dumpxml", "--inactive", name,
                                  check=True).stdout)
    return [(s.get("type"), s.get("offset"), s.get("size"))
            for s in root.findall("./devices/disk[@device='disk']/source/slices/slice")]


def test_a_copy_into_lvm_killed_half_way_leaves_the_volume_group_as_it_was(
        app, lab, lab_server, fleet, shaped_link):
    name = "cv-kill"
    server = lab_server("node1", name, stopped=True, format="qcow2", disk=DISK)
    ref = keep_reference(lab, server["disk"]["path"], name)
    sync(app, {n: fleet[n] for n in ("node1", "lvm1")})
    before = lvs(lab)
    shaped_link("node1", 8)  # the image's ~30 MiB take half a minute: the kill lands mid-copy
    box = {}
    mover = threading.Thread(target=lambda: box.update(report=migrate(
        app, fleet, [name], "lvm1", live=False, convert_to="lvm")))
    started = time.monotonic()
    mover.start()
    try:
        pid_file = wait_for_copy(lab, mover)
        # The copy's own process, by the PID Ferry recorded for it.
        lab.exec("lvm1", "sh", "-c", 'kill -9 "$(cat "$1")"', "kill-copy", pid_file, check=True)
    finally:
        mover.join(900)
    [task] = box["report"]["tasks"]
    assert box["report"]["status"] == status.MIGRATION_FAILED, task
    assert "copying vda failed" in (task["error"] or ""), task["error"]
    assert lvs(lab) == before
    assert where(lab, name) == {"node1": "shut off"}
    assert_same_as_reference(lab, "node1", ref, server["disk"]["path"], "qcow2")
    ROWS.append({"hop": f"file-qcow2 → lvm ({name}), its qemu-img killed mid-copy", "src": "node1", "dst": "lvm1",
                 "transfer": "TLS", "outcome": "failed, rolled back: lvs equal, server on node1",
                 "total": _s((time.monotonic() - started) * 1000), "copy": "", "verify": "",
                 "thin": ""})
    for node in ("node1", "lvm1"):
        lab.exec(node, "rm", "-f", "--", ref)


def wait_for_copy(lab, mover):
    """The PID file of the task's qemu-img on lvm1, once the copy runs."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and mover.is_alive():
        found = lab.exec("lvm1", "sh", "-c", "ls /run/ferry-copy-*.pid 2>/dev/null").stdout.split()
        if found and [lv for lv in lvs(lab) if ".ferry-" in lv]:
            return found[0]
        time.sleep(0.5)
    raise AssertionError("the copy into lvm1 never started")

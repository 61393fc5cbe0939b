"""Offline moves into and out of LVM and thin LVM on the fake cluster: every new step branch,
every failure and every crash boundary settling with the volume groups as they should be.

The lab proves the real thing (tests/lab/test_lvm_conversions.py, with the one LVM node the
lab has); LVM to LVM and thin to LVM need two LVM nodes, so only these tests prove them.
"""
import copy
import xml.etree.ElementTree as ET

import pytest

from app import status
from app.extensions import db
from app.infra import migration as mig
from app.models import ComputeResource, Disk, MigrationGroup, MigrationTask, Server
from app.services import engine, offline
from tests.fakes import EXTENT, FakeCluster, FakeDomain, FakeNode, FakeNodes, domain_xml
from tests.unit.test_engine_steps import Crash, crash_at, engine_app, engine_context  # noqa: F401

UUID = "11111111-2222-4333-8444-666666666666"
IMAGES = "/var/lib/libvirt/images"
DATA = b"disk-data"
SOURCE_FILE = f"{IMAGES}/web.qcow2"
LVM_FACTS = {"volume_groups": [{"name": "ferry", "size": 10 << 30, "free": 4 << 30}],
             "thin_pools": [{"vg": "ferry", "name": "thinpool", "size": 6 << 30,
                             "data_percent": 2.0, "metadata_percent": 5.0}]}
ODD = (1 << 30) + (1 << 20) + 512  # a virtual size that is no whole number of extents
KINDS = {"file-qcow2": ("file", "qcow2"), "file-raw": ("file", "raw"),
         "lvm": ("block", "raw"), "thinlvm": ("block", "raw")}


def facts(lvm=True):
    pools = [{"name": "default", "type": "dir", "path": IMAGES}]
    return {"storage_pools": pools, **({"lvm": LVM_FACTS} if lvm else {})}


@pytest.fixture
def world(engine_context):
    """make(src, dst_node, convert_to): web on `src`'s kind (on lvm1 when LVM, else node1),
    to move to dst_node (node1: no LVM; lvm1 and lvm2: volume group ferry with a thin pool)."""
    def make(src="file-qcow2", to=None, convert_to=None, dst_has_lvm=True, size=None):
        cluster = FakeCluster(FakeNode("node1", "10.0.0.11"), FakeNode("lvm1", "10.0.0.200"),
                              FakeNode("lvm2", "10.0.0.201"))
        on = "lvm1" if src in ("lvm", "thinlvm") else "node1"
        to = to or ("node1" if on == "lvm1" else "lvm1")
        kind, fmt = KINDS[src]
        disk = ["vda", None, fmt, kind]
        if kind == "block":
            path = disk[1] = "/dev/ferry/web"
            # A disk of `size` on LVM: a volume of whole extents whose tail past the size holds
            # old data, sliced to the size in the definition (as Ferry defines one).
            cluster.node(on).add_volume("ferry", "web", DATA, "thin" if src == "thinlvm" else
                                        "linear", "thinpool" if src == "thinlvm" else "",
                                        extents(size) if size else 1 << 30)
            if size:
                disk.append(size)
                if src == "lvm":
                    cluster.node(on).stale[path] = (size, extents(size))
        else:
            path = disk[1] = SOURCE_FILE if fmt == "qcow2" else f"{IMAGES}/web.raw"
            cluster.node(on).files[path] = DATA
            if size:
                cluster.node(on).sizes[path] = size
        cluster.node(on).domains[UUID] = FakeDomain(xml=domain_xml(UUID, "web", [tuple(disk)]))
        rows = {name: ComputeResource(name=name, host=cluster.node(name).address, key_path="/k",
                                      facts=facts(name != "node1" and (dst_has_lvm or name != to)))
                for name in ("node1", "lvm1", "lvm2")}
        server = Server(uuid=UUID, name="web", compute_resource=rows[on], memory_mib=256,
                        state=status.SERVER_STOPPED)
        server.disks.append(Disk(target="vda", path=path, format=fmt, storage_type=src,
                                 virtual_size=1 << 30))
        task = MigrationTask(server=server, source=rows[on], destination=rows[to],
                             mode=status.MODE_OFFLINE, status=status.MIGRATION_RUNNING)
        db.session.add(MigrationGroup(status=status.MIGRATION_RUNNING, tasks=[task], options={
            "mode": status.MODE_OFFLINE, "convert_to": convert_to, "preserve_ip": True}))
        db.session.commit()
        cluster.before = {n: copy.deepcopy(cluster.node(n).volumes) for n in cluster.nodes}
        return cluster, task
    return make


def extents(size):
    """The size lvm gives a volume asked for `size` bytes: whole 4 MiB extents."""
    return -(-size // EXTENT) * EXTENT


def run(task, cluster):
    return engine.run(task, nodes=FakeNodes(cluster))


def disk_of(cluster, node):
    """The (type, path, driver type) of web's disk as `node` defines it."""
    [disk] = mig.disk_targets(cluster.node(node).domains[UUID].xml)
    return disk["type"], disk["path"], disk["format"]


def slice_of(cluster, node):
    """The size of the storage slice web's disk has in `node`'s definition, or None."""
    found = ET.fromstring(cluster.node(node).domains[UUID].xml).find(
        "./devices/disk/source/slices/slice[@type='storage']")
    return None if found is None else (int(found.get("offset")), int(found.get("size")))


def assert_settled(cluster, task, on):
    """Defined on exactly `on` with its data; the other node holds nothing of the task's,
    every volume group outside the server's own volume as it was before."""
    assert cluster.where(UUID) == [on]
    kind, path, _ = disk_of(cluster, on)
    assert cluster.node(on).files[path] == DATA
    for name, node in cluster.nodes.items():
        assert not [p for p in node.files if ".part" in p or p.startswith("/run/ferry-")], name
        now = {k: v for k, v in node.volumes.items() if k != "ferry/web"}
        then = {k: v for k, v in cluster.before[name].items() if k != "ferry/web"}
        assert now == then, (name, now, then)
        if name != on:
            assert not [p for p in node.files if p.startswith(IMAGES)], name
            assert "ferry/web" not in node.volumes or name == task.source.name and on == name
    db.session.refresh(task)
    assert task.status in status.MIGRATION_DONE


@pytest.mark.parametrize("src, to, convert_to, kind, path, segtype", [
    ("file-qcow2", "lvm1", "lvm", "block", "/dev/ferry/web", "linear"),
    ("file-raw", "lvm1", "thinlvm", "block", "/dev/ferry/web", "thin"),
    ("lvm", "node1", "file-raw", "file", f"{IMAGES}/web.raw", None),
    ("thinlvm", "node1", "file-qcow2", "file", f"{IMAGES}/web.qcow2", None),
    ("lvm", "lvm2", "thinlvm", "block", "/dev/ferry/web", "thin"),
    ("thinlvm", "lvm2", "lvm", "block", "/dev/ferry/web", "linear"),
    ("lvm", "lvm2", None, "block", "/dev/ferry/web", "linear"),
    ("thinlvm", "lvm2", None, "block", "/dev/ferry/web", "thin"),
])
def test_it_converts_into_and_out_of_lvm_and_thin_lvm(world, src, to, convert_to, kind, path,
                                                     segtype):
    cluster, task = world(src, to, convert_to)
    assert run(task, cluster) == status.MIGRATION_FINISHED, task.error
    assert_settled(cluster, task, to)
    assert disk_of(cluster, to) == (kind, path, "raw" if kind == "block" else path.rsplit(".", 1)[1])
    dst = cluster.node(to)
    if segtype:
        volume = dst.volumes["ferry/web"]
        assert (volume["segtype"], volume["size"]) == (segtype, 1 << 30)
        assert volume["pool"] == ("thinpool" if segtype == "thin" else "")
        [convert] = [argv for node, argv in cluster.commands if argv[:2] == ["qemu-img", "convert"]
                     or argv[5:7] == ["qemu-img", "convert"]]
        assert "-n" in convert and ("--target-is-zero" in convert) == (segtype == "thin")
    source = cluster.node(task.source.name)
    assert "ferry/web" not in source.volumes and SOURCE_FILE not in source.files
    row = task.server.disks[0]
    assert (row.path, row.storage_type) == (path, convert_to or src)
    assert task.server.compute_resource.name == to


def test_the_temporary_volume_is_journaled_before_it_is_created(world):
    cluster, task = world("file-qcow2", "lvm1", "lvm")
    seen = {}

    def look():
        copy_entry = [s for s in task.steps if s.name == "copy"][-1]
        seen["volumes"] = copy_entry.names["volumes"]
    cluster.on("lvm1", "lvcreate", look)
    assert run(task, cluster) == status.MIGRATION_FINISHED, task.error
    [[vg, name]] = seen["volumes"]
    assert vg == "ferry" and name.startswith("web.ferry-") and name.endswith(".part")
    creates = [argv for node, argv in cluster.commands if argv[0] == "lvcreate"]
    assert creates == [["lvcreate", "--yes", "--wipesignatures", "y", "-n", name,
                        "-L", f"{1 << 30}b", "ferry"]]


@pytest.mark.parametrize("src, to, convert_to, what, node", [
    ("file-qcow2", "lvm1", "lvm", "lvcreate", "lvm1"),
    ("file-qcow2", "lvm1", "lvm", "qemu-img convert", "lvm1"),
    ("file-raw", "lvm1", "thinlvm", "qemu-img compare", "lvm1"),
    ("file-raw", "lvm1", "thinlvm", "lvrename", "lvm1"),
    ("file-qcow2", "lvm1", "lvm", "define", "lvm1"),
    ("file-qcow2", "lvm1", "lvm", "undefine", "node1"),
    ("lvm", "node1", "file-raw", "qemu-nbd", "lvm1"),
    ("lvm", "node1", "file-raw", "qemu-img convert", "node1"),
    ("thinlvm", "lvm2", "lvm", "qemu-img compare", "lvm2"),
])
def test_a_failure_removes_only_the_volume_the_task_created(world, src, to, convert_to, what,
                                                            node):
    cluster, task = world(src, to, convert_to)
    cluster.fail(node, what)
    assert run(task, cluster) == status.MIGRATION_FAILED, task.error
    assert_settled(cluster, task, task.source.name)
    for name in cluster.nodes:
        assert cluster.node(name).volumes == cluster.before[name], name


def test_an_existing_volume_of_the_same_name_is_never_overwritten_or_removed(world):
    cluster, task = world("file-qcow2", "lvm1", "lvm")
    cluster.node("lvm1").add_volume("ferry", "web", b"someone-else")
    cluster.before["lvm1"] = copy.deepcopy(cluster.node("lvm1").volumes)
    assert run(task, cluster) == status.MIGRATION_FAILED
    assert "already has" in task.error and "/dev/ferry/web" in task.error
    assert cluster.node("lvm1").files["/dev/ferry/web"] == b"someone-else"
    assert cluster.node("lvm1").volumes == cluster.before["lvm1"]
    assert cluster.where(UUID) == ["node1"] and cluster.node("node1").files[SOURCE_FILE] == DATA


def test_a_destination_without_a_volume_group_is_refused_before_anything_is_created(world):
    cluster, task = world("file-qcow2", "lvm2", "lvm", dst_has_lvm=False)
    assert run(task, cluster) == status.MIGRATION_FAILED
    assert "lvm2 has no LVM volume group" in task.error
    assert not [argv for _, argv in cluster.commands if argv[0] in ("lvcreate", "qemu-nbd")]


def test_a_block_disk_that_is_no_logical_volume_is_refused(world):
    cluster, task = world("lvm", "node1", "file-raw")
    cluster.node("lvm1").volumes.clear()  # /dev/ferry/web is some other block device now
    assert run(task, cluster) == status.MIGRATION_FAILED
    assert "no logical volume" in task.error
    assert cluster.where(UUID) == ["lvm1"] and "/dev/ferry/web" in cluster.node("lvm1").files


def test_a_redone_source_removal_counts_a_volume_already_gone_as_removed(world):
    cluster, task = world("lvm", "node1", "file-raw")
    cluster.on("lvm1", "lvremove", lambda: cluster.node("lvm1").volumes.pop("ferry/web"))
    assert run(task, cluster) == status.MIGRATION_FINISHED, task.error
    removal = [s for s in task.steps if s.name == "remove-source-disks"][-1]
    assert removal.data["removed"] == ["ferry/web"] and removal.data["kept"] == []


LVM_POINTS = [f"offline:{when}:{step.name}" for step in offline.RUNNER.steps
              for when in ("before", "after")]


@pytest.mark.parametrize("src, to, convert_to", [("file-qcow2", "lvm1", "lvm"),
                                                 ("file-raw", "lvm1", "thinlvm"),
                                                 ("thinlvm", "node1", "file-qcow2")])
@pytest.mark.parametrize("point", LVM_POINTS)
def test_recovery_settles_a_move_into_or_out_of_lvm_killed_at_every_boundary(
        world, crash_at, point, src, to, convert_to):  # noqa: F811 - the imported fixture
    cluster, task = world(src, to, convert_to)
    crash_at(point)
    with pytest.raises(Crash):
        run(task, cluster)
    _, when, name = point.split(":")
    # Caught half-way before the source let go: rolled back; any later point goes forward.
    committed = offline.RUNNER.index(offline.RUNNER.committed_after)
    back = when == "before" and offline.RUNNER.index(name) < committed
    expected = {True: (status.MIGRATION_FAILED, task.source.name),
                False: (status.MIGRATION_FINISHED, to)}[back]
    assert engine.resume(task, nodes=FakeNodes(cluster)) == expected[0], task.error
    assert_settled(cluster, task, expected[1])
    if back:
        assert {n: node.volumes for n, node in cluster.nodes.items()} == cluster.before


@pytest.mark.parametrize("convert_to", ["lvm", "thinlvm"])
def test_a_disk_of_no_whole_number_of_extents_goes_into_lvm_with_its_guest_size_kept(
        world, convert_to):
    cluster, task = world("file-qcow2", "lvm1", convert_to, size=ODD)
    assert run(task, cluster) == status.MIGRATION_FINISHED, task.error
    assert_settled(cluster, task, "lvm1")
    dst = cluster.node("lvm1")
    assert dst.volumes["ferry/web"]["size"] == extents(ODD) > ODD
    assert "/dev/ferry/web" not in dst.stale  # the tail reads as zeros: the compare said so
    assert slice_of(cluster, "lvm1") == (0, ODD)  # the guest sees its disk's size, not the LV's
    zeroed = [argv for _, argv in cluster.commands if argv[0] == "dd"]
    if convert_to == "lvm":
        [ops] = [dict(a.split("=", 1) for a in argv[1:]) for argv in zeroed]
        assert (ops["if"], ops["seek"], ops["count"]) == ("/dev/zero", str(ODD),
                                                          str(extents(ODD) - ODD))
        assert ops["of"].startswith("/dev/ferry/web.ferry-")  # the task's volume, before its rename
    else:
        assert zeroed == []  # a fresh thin volume reads as zeros; writing them would allocate it


@pytest.mark.parametrize("src, to, convert_to", [("lvm", "node1", "file-raw"),
                                                 ("thinlvm", "node1", "file-qcow2"),
                                                 ("lvm", "lvm2", "thinlvm"),
                                                 ("thinlvm", "lvm2", "lvm"),
                                                 ("lvm", "lvm2", None)])
def test_a_sliced_volume_comes_out_of_lvm_at_its_guest_size(world, src, to, convert_to):
    cluster, task = world(src, to, convert_to, size=ODD)
    assert run(task, cluster) == status.MIGRATION_FINISHED, task.error
    assert_settled(cluster, task, to)
    kind, path, _ = disk_of(cluster, to)
    dst = cluster.node(to)
    if kind == "file":
        assert dst.size(path) == ODD and slice_of(cluster, to) is None
    else:
        assert slice_of(cluster, to) == (0, ODD) and dst.volumes["ferry/web"]["size"] == extents(ODD)
        assert path not in dst.stale
    [export] = [argv for _, argv in cluster.commands if argv[0] == "qemu-nbd"]
    assert export[-1] == ("driver=raw,size=%d,file.driver=host_device,file.filename=/dev/ferry/web"
                          % ODD)


def died():
    raise SystemExit("the worker died")


@pytest.mark.parametrize("src, to, convert_to, rename", [
    ("file-qcow2", "lvm1", "lvm", "lvrename"),
    ("file-raw", "lvm1", "thinlvm", "lvrename"),
    ("thinlvm", "node1", "file-qcow2", "ferry-rename"),
])
def test_a_worker_that_dies_right_after_renaming_a_copy_into_place_leaves_it_to_recovery(
        world, src, to, convert_to, rename):
    """The rename reached the node, the journal never heard of it: recovery still removes the
    copy under its final name, since the journal named it before the rename."""
    cluster, task = world(src, to, convert_to)
    cluster.on(to, rename, died, after=True)
    with pytest.raises(SystemExit):
        run(task, cluster)
    assert cluster.where(UUID) == [task.source.name]
    assert engine.resume(task, nodes=FakeNodes(cluster)) == status.MIGRATION_FAILED, task.error
    assert_settled(cluster, task, task.source.name)
    assert {n: node.volumes for n, node in cluster.nodes.items()} == cluster.before


@pytest.mark.parametrize("dies", [False, True])
def test_a_volume_that_took_the_final_name_during_the_copy_is_never_removed(world, dies):
    cluster, task = world("file-qcow2", "lvm1", "lvm")
    lvm1 = cluster.node("lvm1")
    cluster.on("lvm1", "lvrename", lambda: lvm1.add_volume("ferry", "web", b"someone-else"))
    if dies:
        cluster.on("lvm1", "lvrename", died, after=True)
        with pytest.raises(SystemExit):
            run(task, cluster)
        assert engine.resume(task, nodes=FakeNodes(cluster)) == status.MIGRATION_FAILED
    else:
        assert run(task, cluster) == status.MIGRATION_FAILED
    assert lvm1.files["/dev/ferry/web"] == b"someone-else" and "ferry/web" in lvm1.volumes
    assert [key for key in lvm1.volumes if key != "ferry/web"] == [
        key for key in cluster.before["lvm1"]]
    assert cluster.where(UUID) == ["node1"] and cluster.node("node1").files[SOURCE_FILE] == DATA


def test_it_passes_the_doctests_of_the_disk_plan():
    import doctest
    from app.services import disks
    assert doctest.testmod(disks).failed == 0

"""Preflight for moves into LVM and thin LVM (pure checks, no node): the volume group's free
room, the thin pool's data and metadata percent, each refusal with its reason."""
from dataclasses import replace

from app.services.preflight_checks import (FAIL, PASS, DiskInfo, MigrationOptions, ResourceInfo,
                                           ServerInfo, check_disk_space, check_lvm_space,
                                           run_checks)

GIB = 1 << 30
DISK = DiskInfo("/var/lib/libvirt/images/web.qcow2", "qcow2", "file-qcow2",
                virtual_size=4 * GIB, allocation=1 * GIB)
WEB = ServerInfo("web", "stopped", "node1", disks=(DISK,))
LVM = {"volume_groups": [{"name": "small", "size": 20 * GIB, "free": 1 * GIB},
                         {"name": "ferry", "size": 20 * GIB, "free": 5 * GIB}],
       "thin_pools": [{"vg": "ferry", "name": "busy", "size": 10 * GIB, "data_percent": 95.0,
                       "metadata_percent": 10.0},
                      {"vg": "ferry", "name": "thinpool", "size": 10 * GIB, "data_percent": 50.0,
                       "metadata_percent": 10.0}]}
LVM1 = ResourceInfo("lvm1", "active", {"lvm": LVM, "storage_pools": []})
OFFLINE = {kind: MigrationOptions(live=False, convert_to=kind) for kind in ("lvm", "thinlvm")}


def with_lvm(**changes):
    """lvm1 with its first thin pool or group changed ("pool" / "group" dicts)."""
    lvm = {"volume_groups": [dict(LVM["volume_groups"][1], **changes.get("group", {}))],
           "thin_pools": [dict(LVM["thin_pools"][1], **changes.get("pool", {}))]}
    return replace(LVM1, facts={"lvm": lvm})


def test_thick_volumes_fit_the_group_with_the_most_room_by_their_whole_virtual_size():
    result = check_lvm_space([WEB], LVM1, OFFLINE["lvm"])
    assert result.status == PASS, result.message
    assert result.data["volume_group"] == {"name": "ferry", "free": 5 * GIB}
    assert result.data["thick_bytes"] == 4 * GIB  # not the 1 GiB allocated: a thick LV is full


def test_it_refuses_a_volume_group_too_small_with_its_numbers():
    result = check_lvm_space([WEB, replace(WEB, name="db")], LVM1, OFFLINE["lvm"])
    assert result.status == FAIL
    assert "volume group too small" in result.message and "ferry" in result.message
    assert "8.0 GiB" in result.message or "8 GiB" in result.message


def test_thin_volumes_go_to_the_least_used_pool_by_what_they_hold():
    result = check_lvm_space([WEB], LVM1, OFFLINE["thinlvm"])
    assert result.status == PASS, result.message
    assert result.data["thin_pool"]["name"] == "ferry/thinpool"
    assert result.data["thin_pool"]["data_percent_after"] == 60.0  # 50% + 1 GiB of 10 GiB


def test_it_refuses_a_thin_pool_too_full_for_its_data_or_its_metadata():
    data = check_lvm_space([WEB], with_lvm(pool={"data_percent": 85.0}), OFFLINE["thinlvm"])
    assert data.status == FAIL and "thin pool too full" in data.message
    assert "95.0%" in data.message  # where the copy would take it
    meta = check_lvm_space([WEB], with_lvm(pool={"metadata_percent": 81.5}), OFFLINE["thinlvm"])
    assert meta.status == FAIL and "thin pool too full" in meta.message
    assert "metadata is 81.5% used" in meta.message


def test_it_refuses_without_a_thin_pool_or_without_lvm_facts():
    no_pool = replace(LVM1, facts={"lvm": {"volume_groups": LVM["volume_groups"],
                                           "thin_pools": []}})
    assert "no LVM thin pool" in check_lvm_space([WEB], no_pool, OFFLINE["thinlvm"]).message
    unknown = check_lvm_space([WEB], replace(LVM1, facts={}), OFFLINE["lvm"])
    assert unknown.status == FAIL and "sync" in unknown.message


def test_a_server_already_on_lvm_is_counted_without_a_conversion_and_files_are_not():
    thin = replace(WEB, disks=(replace(DISK, path="/dev/ferry/web", format="raw",
                                       storage_type="thinlvm"),))
    result = check_lvm_space([thin], with_lvm(pool={"data_percent": 89.5}),
                             MigrationOptions(live=False))
    assert result.status == FAIL and "thin pool too full" in result.message
    assert check_lvm_space([WEB], LVM1, MigrationOptions(live=False)).message == \
        "No disk goes to LVM."
    to_file = MigrationOptions(live=False, convert_to="file-raw")
    assert check_lvm_space([thin], replace(LVM1, facts={}), to_file).status == PASS


def test_the_file_pool_check_leaves_lvm_to_the_lvm_check():
    result = check_disk_space([WEB], LVM1, OFFLINE["thinlvm"])
    assert result.status == PASS and "every disk goes to LVM" in result.message


def test_run_checks_refuses_a_live_move_to_lvm_and_checks_lvm_space_offline():
    source = ResourceInfo("node1", "active", {})
    live = run_checks([replace(WEB, state="running")], {"node1": source}, LVM1,
                      MigrationOptions(live=True, convert_to="lvm"), {})
    failed = {r.name for r in live if r.status == FAIL}
    assert {"disk-types", "live-conversion"} <= failed
    offline = run_checks([WEB], {"node1": source}, with_lvm(group={"free": GIB}),
                         OFFLINE["lvm"], {})
    [lvm_space] = [r for r in offline if r.name == "lvm-space"]
    assert lvm_space.status == FAIL and "volume group too small" in lvm_space.message
    assert [r.status for r in offline if r.name == "disk-types"] == [PASS]

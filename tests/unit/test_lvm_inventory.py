"""Reading LVM and thin LVM disks: the lvs command, its strict parser, and typing block disks.

The lvs output here is what lvm2 2.03 printed on the lab's LVM node (tests/lab has the
live counterpart); the malformed variants are what a broken or hostile node could send.
"""
import doctest
import json

import pytest

from app import status
from app.infra import libvirt
from app.infra.commands import lvm
from app.infra.commands.lvm import with_volume
from app.infra.libvirt import DiskInfo, GuestInfo
from app.services.inventory import with_lvm_details

GIB = 1 << 30


def lv(path, segtype="linear", pool="", size=str(GIB), percent="", dm_path=None):
    """One lvs report entry, every field a string as lvs prints it."""
    vg, name = path.split("/")[-2:]
    return {"vg_name": vg, "lv_name": name, "lv_path": path,
            "lv_dm_path": dm_path or f"/dev/mapper/{vg}-{name}", "segtype": segtype,
            "pool_lv": pool, "lv_size": size, "data_percent": percent, "metadata_percent": ""}


def report(*entries, key="lv"):
    return json.dumps({"report": [{key: list(entries)}]})


LAB_OUTPUT = report(
    lv("/dev/ferry/thick-web"),
    lv("/dev/ferry/thin-db", "thin", "thinpool", str(2 * GIB), "1.47"),
    # The pool itself has no device path: not a disk any server can have.
    {"vg_name": "ferry", "lv_name": "thinpool", "lv_path": "",
     "lv_dm_path": "/dev/mapper/ferry-thinpool", "segtype": "thin-pool", "pool_lv": "",
     "lv_size": str(6 * GIB), "data_percent": "0.49", "metadata_percent": "10.84"},
    lv("/dev/ferry/striped", "striped", size="4194304"),
)
VGS_OUTPUT = report({"vg_name": "ferry", "vg_size": "17175674880", "vg_free": "10712252416"},
                    key="vg")


def block(path, target="vda", size=0, allocation=0):
    return DiskInfo(target, path, "raw", libvirt.storage_type("block", "raw"), size,
                    allocation, "block")


def test_it_builds_lvs_and_vgs_as_argument_lists_asking_for_bytes_and_json():
    for argv, command in ((lvm.LVS, "lvs"), (lvm.VGS, "vgs")):
        assert argv[:3] == [command, "--reportformat", "json"]
        assert "--nosuffix" in argv and argv[argv.index("--units") + 1] == "b"
    assert "segtype" in lvm.LVS[-1].split(",") and "data_percent" in lvm.LVS[-1].split(",")
    assert lvm.VGS[-1] == "vg_name,vg_size,vg_free"


def test_it_passes_the_doctests_of_the_lvm_module_and_storage_type():
    assert doctest.testmod(lvm).failed == 0
    assert doctest.testmod(libvirt).failed == 0


def test_it_reads_thick_thin_and_striped_volumes_by_both_device_paths():
    volumes = lvm.by_device(lvm.parse_lvs(LAB_OUTPUT))

    thick, thin = volumes["/dev/ferry/thick-web"], volumes["/dev/ferry/thin-db"]
    assert (thick.segtype, thick.thin, thick.size, thick.allocation) == ("linear", False, GIB, GIB)
    assert (thin.thin, thin.pool, thin.size) == (True, "thinpool", 2 * GIB)
    assert thin.allocation == int(2 * GIB * 0.0147)
    assert volumes["/dev/mapper/ferry-thin-db"] is thin
    assert volumes["/dev/ferry/striped"].size == 4194304
    assert not any("thinpool" in path for path in volumes)


def test_it_reads_a_node_without_volumes_as_empty():
    assert lvm.parse_lvs(json.dumps({"report": [{"lv": []}]})) == []
    assert lvm.parse_lvs(json.dumps({"report": []})) == []
    assert lvm.facts([], []) == {"volume_groups": [], "thin_pools": []}


def test_it_records_volume_groups_and_thin_pools_as_facts():
    facts = lvm.facts(lvm.parse_vgs(VGS_OUTPUT), lvm.parse_lvs(LAB_OUTPUT))

    assert facts == {
        "volume_groups": [{"name": "ferry", "size": 17175674880, "free": 10712252416}],
        "thin_pools": [{"vg": "ferry", "name": "thinpool", "size": 6 * GIB,
                        "data_percent": 0.49, "metadata_percent": 10.84}]}


def test_it_types_block_disks_thin_or_thick_from_the_segment_type():
    volumes = lvm.by_device(lvm.parse_lvs(LAB_OUTPUT))

    thin = with_volume(block("/dev/ferry/thin-db"), volumes)
    thick = with_volume(block("/dev/mapper/ferry-thick-web"), volumes)
    striped = with_volume(block("/dev/ferry/striped"), volumes)

    assert (thin.storage_type, thin.virtual_size, thin.allocation) == (
        status.STORAGE_THINLVM, 2 * GIB, int(2 * GIB * 0.0147))
    assert (thick.storage_type, thick.virtual_size, thick.allocation) == (
        status.STORAGE_LVM, GIB, GIB)
    assert striped.storage_type == status.STORAGE_LVM


def test_it_sizes_a_sliced_volume_by_its_slice_the_size_its_guest_sees():
    """Ferry slices a volume lvm rounded up past the disk's size; libvirt and lvs report the
    whole volume."""
    xml = ("<domain><devices><disk type='block' device='disk'><driver type='raw'/>"
           "<source dev='/dev/ferry/thick-web'><slices><slice type='storage' offset='0' "
           f"size='{GIB - 512}'/></slices></source><target dev='vda'/></disk></devices></domain>")
    [disk] = libvirt.domain_disks(xml)
    assert disk["slice"] == GIB - 512
    sliced = DiskInfo("vda", "/dev/ferry/thick-web", "raw", status.STORAGE_LVM, GIB - 512, GIB,
                      "block", disk["slice"])
    thick = with_volume(sliced, lvm.by_device(lvm.parse_lvs(LAB_OUTPUT)))
    assert (thick.storage_type, thick.virtual_size) == (status.STORAGE_LVM, GIB - 512)


def test_it_leaves_file_disks_and_block_devices_that_are_no_volume_alone():
    volumes = lvm.by_device(lvm.parse_lvs(LAB_OUTPUT))
    qcow2 = DiskInfo("vda", "/dev/ferry/thin-db", "qcow2", status.STORAGE_FILE_QCOW2, GIB, 5)
    raw_device = block("/dev/sdb", size=GIB, allocation=GIB)

    assert with_volume(qcow2, volumes) is qcow2  # a file disk, even with a misleading path
    assert with_volume(raw_device, volumes) is raw_device


def test_it_applies_the_volumes_to_every_disk_of_every_guest():
    guests = [GuestInfo("u1", "web", status.SERVER_STOPPED, 1, 256, 0, True,
                        [block("/dev/ferry/thin-db"), block("/dev/ferry/thick-web", "vdb")]),
              GuestInfo("u2", "files", status.SERVER_RUNNING, 1, 256, 0, True,
                        [DiskInfo("vda", "/img/f.qcow2", "qcow2", status.STORAGE_FILE_QCOW2,
                                  GIB, 7)])]

    typed = with_lvm_details(guests, lvm.by_device(lvm.parse_lvs(LAB_OUTPUT)))

    assert [d.storage_type for d in typed[0].disks] == [status.STORAGE_THINLVM,
                                                        status.STORAGE_LVM]
    assert typed[1].disks == guests[1].disks
    assert guests[0].disks[0].storage_type == status.STORAGE_LVM  # the input is not changed


@pytest.mark.parametrize("output, complaint", [
    ("", "did not print JSON"),
    ("  WARNING: Failed to connect to lvmetad\n", "did not print JSON"),
    ("[1, 2]", "without a report list"),
    ('{"report": {"lv": []}}', "without a report list"),
    ('{"report": ["lv"]}', "without a report list"),
    ('{"report": [{"lv": {"lv_path": "/dev/ferry/x"}}]}', "lv is not a list"),
    ('{"report": [{"lv": ["/dev/ferry/x"]}]}', "is not an object"),
    (report(dict(lv("/dev/ferry/x"), vg_name="")), "odd vg_name"),
    (report(dict(lv("/dev/ferry/x"), lv_name="-x")), "odd lv_name"),
    (report(lv("/dev/ferry/x", size="1.00g")), "not bytes"),
    (report(lv("/dev/ferry/x", size="-5")), "not bytes"),
    (report(lv("/dev/ferry/x", size="0")), "not bytes"),
    (report(lv("/dev/ferry/x", size=str(1 << 70))), "not bytes"),
    (report(dict(lv("/dev/ferry/x"), lv_size=1073741824)), "non-text lv_size"),
    (report(dict(lv("/dev/ferry/x"), lv_path=["/dev/ferry/x"])), "non-text lv_path"),
    (report(lv("/etc/passwd")), "odd lv_path"),
    (report(lv("/dev/../etc/passwd")), "odd lv_path"),
    (report(lv("/dev/ferry/x", dm_path="mapper/ferry-x")), "odd lv_dm_path"),
    (report(lv("/dev/ferry/x", segtype="thin; rm -rf /")), "odd segtype"),
    (report(lv("/dev/ferry/x", "thin", pool="../pool")), "odd pool_lv"),
    (report(lv("/dev/ferry/x", "thin", "pool", percent="12%")), "odd data_percent"),
    (report(lv("/dev/ferry/x", "thin", "pool", percent="250.0")), "odd data_percent"),
    (report(dict(lv("/dev/ferry/x"), metadata_percent="NaN")), "odd metadata_percent"),
    ("[" * 100000, "did not print JSON"),
])
def test_it_refuses_lvs_output_of_any_other_shape_with_a_clear_error(output, complaint):
    with pytest.raises(lvm.UnexpectedOutput, match=complaint):
        lvm.parse_lvs(output)


@pytest.mark.parametrize("output, complaint", [
    ("vgs: command failed", "did not print JSON"),
    (report({"vg_name": "ferry", "vg_size": "1.00g", "vg_free": "0"}, key="vg"), "not bytes"),
    (report({"vg_name": "ferry", "vg_size": "100", "vg_free": "-1"}, key="vg"), "not bytes"),
    (report({"vg_name": "a b", "vg_size": "100", "vg_free": "0"}, key="vg"), "odd vg_name"),
    (report("ferry", key="vg"), "is not an object"),
])
def test_it_refuses_vgs_output_of_any_other_shape_with_a_clear_error(output, complaint):
    with pytest.raises(lvm.UnexpectedOutput, match=complaint):
        lvm.parse_vgs(output)


def test_it_reads_an_empty_volume_group_as_full_of_room_and_none_as_nothing():
    groups = lvm.parse_vgs(report({"vg_name": "vg0", "vg_size": "100", "vg_free": "0"},
                                  key="vg"))
    assert groups == [lvm.VolumeGroup("vg0", 100, 0)]


def test_it_reads_groups_and_volumes_from_one_report_command():
    assert lvm.REPORT[:2] == ["sh", "-c"] and len(lvm.REPORT) == 3  # a constant script
    groups, volumes = lvm.parse_report(f"{VGS_OUTPUT}\n{lvm.SEPARATOR}\n{LAB_OUTPUT}\n")

    assert [g.name for g in groups] == ["ferry"]
    assert sorted(v.name for v in volumes) == ["striped", "thick-web", "thin-db", "thinpool"]


def test_it_reads_a_node_without_lvm2_as_having_no_lvm():
    # "sh: vgs: not found" goes to stderr: only the separator reaches stdout.
    assert lvm.parse_report(f"{lvm.SEPARATOR}\n") == ([], [])


@pytest.mark.parametrize("output", ["", VGS_OUTPUT, f"{lvm.SEPARATOR}\n{lvm.SEPARATOR}\n",
                                    f"garbage\n{lvm.SEPARATOR}\n{LAB_OUTPUT}"])
def test_it_refuses_a_report_of_another_shape(output):
    with pytest.raises(lvm.UnexpectedOutput):
        lvm.parse_report(output)

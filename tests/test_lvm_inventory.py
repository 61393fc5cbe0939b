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
    name = path.rsplit("/", 1)[1]
    return {"lv_path": path, "lv_dm_path": dm_path or f"/dev/mapper/ferry-{name}",
            "segtype": segtype, "pool_lv": pool, "lv_size": size, "data_percent": percent}


def report(*entries):
    return json.dumps({"report": [{"lv": list(entries)}]})


LAB_OUTPUT = report(
    lv("/dev/ferry/thick-web"),
    lv("/dev/ferry/thin-db", "thin", "thinpool", str(2 * GIB), "1.47"),
    # The pool itself has no device path: not a disk any server can have.
    {"lv_path": "", "lv_dm_path": "/dev/mapper/ferry-thinpool", "segtype": "thin-pool",
     "pool_lv": "", "lv_size": str(6 * GIB), "data_percent": "0.49"},
    lv("/dev/ferry/striped", "striped", size="4194304"),
)


def block(path, target="vda", size=0, allocation=0):
    return DiskInfo(target, path, "raw", libvirt.storage_type("block", "raw"), size,
                    allocation, "block")


def test_it_builds_lvs_as_an_argument_list_asking_for_bytes_and_json():
    assert lvm.LVS[:3] == ["lvs", "--reportformat", "json"]
    assert "--nosuffix" in lvm.LVS and lvm.LVS[lvm.LVS.index("--units") + 1] == "b"
    assert lvm.LVS[-1] == "lv_path,lv_dm_path,segtype,pool_lv,lv_size,data_percent"


def test_it_passes_the_doctests_of_the_lvm_module_and_storage_type():
    assert doctest.testmod(lvm).failed == 0
    assert doctest.testmod(libvirt).failed == 0


def test_it_reads_thick_thin_and_striped_volumes_by_both_device_paths():
    volumes = lvm.parse_lvs(LAB_OUTPUT)

    thick, thin = volumes["/dev/ferry/thick-web"], volumes["/dev/ferry/thin-db"]
    assert (thick.segtype, thick.thin, thick.size, thick.allocation) == ("linear", False, GIB, GIB)
    assert (thin.thin, thin.pool, thin.size) == (True, "thinpool", 2 * GIB)
    assert thin.allocation == int(2 * GIB * 0.0147)
    assert volumes["/dev/mapper/ferry-thin-db"] is thin
    assert volumes["/dev/ferry/striped"].size == 4194304
    assert not any("thinpool" in path for path in volumes)


def test_it_reads_a_node_without_volumes_as_empty():
    assert lvm.parse_lvs(json.dumps({"report": [{"lv": []}]})) == {}
    assert lvm.parse_lvs(json.dumps({"report": []})) == {}


def test_it_types_block_disks_thin_or_thick_from_the_segment_type():
    volumes = lvm.parse_lvs(LAB_OUTPUT)

    thin = with_volume(block("/dev/ferry/thin-db"), volumes)
    thick = with_volume(block("/dev/mapper/ferry-thick-web"), volumes)
    striped = with_volume(block("/dev/ferry/striped"), volumes)

    assert (thin.storage_type, thin.virtual_size, thin.allocation) == (
        status.STORAGE_THINLVM, 2 * GIB, int(2 * GIB * 0.0147))
    assert (thick.storage_type, thick.virtual_size, thick.allocation) == (
        status.STORAGE_LVM, GIB, GIB)
    assert striped.storage_type == status.STORAGE_LVM


def test_it_leaves_file_disks_and_block_devices_that_are_no_volume_alone():
    volumes = lvm.parse_lvs(LAB_OUTPUT)
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

    typed = with_lvm_details(guests, lvm.parse_lvs(LAB_OUTPUT))

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
    ("[" * 100000, "did not print JSON"),
])
def test_it_refuses_output_of_any_other_shape_with_a_clear_error(output, complaint):
    with pytest.raises(lvm.UnexpectedOutput, match=complaint):
        lvm.parse_lvs(output)

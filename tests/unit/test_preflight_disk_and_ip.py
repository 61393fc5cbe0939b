"""Preflight refusals the engine relies on: disks it cannot move, and live moves that would
need a new IP (pure checks, no node)."""
from dataclasses import replace

from app.services.preflight_checks import (FAIL, PASS, DiskInfo, IpAddress, MigrationOptions,
                                           ResourceInfo, ServerInfo, check_disk_types,
                                           check_ip_addresses)

FILE = DiskInfo(path="/var/lib/libvirt/images/web.qcow2", format="qcow2",
                storage_type="file-qcow2", virtual_size=1 << 30, allocation=1 << 28)
WEB = ServerInfo(name="web", state="running", resource="node1", disks=(FILE,),
                 ip_addresses=(IpAddress("10.9.1.5", "public-a"),))
NODE2 = ResourceInfo(name="node2", status="active", facts={}, ip_blocks=("public-b",),
                     free_addresses={"public-b": 10})


def test_it_moves_a_logical_volume_offline_and_refuses_it_live_with_its_path():
    for kind in ("lvm", "thinlvm"):
        lv = replace(FILE, path="/dev/vg0/web", storage_type=kind, format="raw")
        assert check_disk_types(replace(WEB, disks=(lv,)), MigrationOptions(live=False)).status \
            == PASS
        result = check_disk_types(replace(WEB, disks=(lv,)), MigrationOptions(live=True))
        assert result.status == FAIL and "/dev/vg0/web" in result.message
        assert "offline only" in result.message


def test_it_refuses_a_disk_without_a_path_and_a_file_under_dev():
    network = replace(FILE, path="", storage_type="file-raw")
    assert check_disk_types(replace(WEB, disks=(network,)), MigrationOptions()).status == FAIL
    odd = replace(FILE, path="/dev/sdb", storage_type="file-raw")
    assert check_disk_types(replace(WEB, disks=(odd,)), MigrationOptions()).status == FAIL


def test_it_refuses_a_live_conversion_to_lvm_and_passes_an_offline_one():
    for target in ("lvm", "thinlvm"):
        result = check_disk_types(WEB, MigrationOptions(live=True, convert_to=target))
        assert result.status == FAIL and target in result.message
        assert check_disk_types(WEB, MigrationOptions(live=False, convert_to=target)).status \
            == PASS


def test_it_passes_file_disks_and_file_conversions():
    for target in (None, "file-raw", "file-qcow2"):
        assert check_disk_types(WEB, MigrationOptions(convert_to=target)).status == PASS


def test_a_live_move_keeps_the_ip_even_when_preserve_ip_is_off():
    result = check_ip_addresses(WEB, NODE2, MigrationOptions(live=True, preserve_ip=False))
    assert result.status == FAIL and "live move" in result.message


def test_an_offline_move_may_change_the_ip():
    result = check_ip_addresses(WEB, NODE2, MigrationOptions(live=False, preserve_ip=False))
    assert result.status == PASS

"""Preflight checks: one test per path (pass, warn, fail), plain data, no nodes."""

from dataclasses import replace

import pytest

from app.services.preflight_checks import (
    CPU_COMPARE_ERROR,
    CPU_COMPARE_IDENTICAL,
    CPU_COMPARE_INCOMPATIBLE,
    CPU_COMPARE_SUPERSET,
    FAIL,
    INFO,
    PASS,
    WARN,
    BackupInfo,
    CheckResult,
    DiskInfo,
    IpAddress,
    MigrationOptions,
    ResourceInfo,
    ServerInfo,
    backup_file_owner,
    backup_kind,
    check_backup_files,
    check_backup_restore_space,
    check_backups,
    check_checkpoints,
    check_cpu_compatibility,
    check_cpu_family,
    check_cpu_vendor,
    check_destination_active,
    check_destination_not_source,
    check_disk_space,
    check_lvm_space,
    check_ip_addresses,
    check_live_conversion,
    check_memory,
    check_nbd,
    check_nested_virtualization,
    check_os_distribution,
    check_os_version,
    check_ports,
    check_same_state,
    check_snapshots,
    check_state_fits_mode,
    check_storage_tags,
    may_start,
    node_backups,
    run_checks,
    run_database_checks,
    storage_type_of,
    summarize,
    target_disk_bytes,
    version_tuple,
)

GIB = 2 ** 30
LIVE = MigrationOptions(live=True)
OFFLINE = MigrationOptions(live=False)


def facts(**over):
    """Node facts in the inventory sync's shape; keyword arguments replace sections."""
    base = {
        "cpu": {"arch": "x86_64", "vendor": "Intel", "model": "Skylake-Server",
                "features": ["vmx"], "host_cpu_xml": "<cpu/>",
                "cpuinfo": {"vendor_id": "GenuineIntel", "family": "6", "model": "85",
                            "model_name": "Intel Xeon", "flags": ["sse2"]}},
        "os": {"id": "debian", "version_id": "12", "name": "Debian GNU/Linux",
               "pretty_name": "Debian GNU/Linux 12 (bookworm)"},
        "kernel": "6.1.0", "libvirt_version": "9.0.0", "qemu_version": "7.2.0",
        "nested_virtualization": False,
        "memory": {"total_mib": 16384, "free_mib": 8192},
        "storage_pools": [{"name": "default", "type": "dir", "path": "/var/lib/libvirt/images",
                           "capacity_bytes": 100 * GIB, "free_bytes": 50 * GIB}],
        "nbd_module": True,
        "backup_dir": {"path": "/var/backups/ferry", "free_bytes": 20 * GIB},
        "gathered_at": "2026-11-25T19:00:00Z",
    }
    base.update(over)
    return base


def cpuinfo(**over):
    """A cpu facts section with some cpuinfo fields replaced."""
    cpu = facts()["cpu"]
    return {**cpu, "cpuinfo": {**cpu["cpuinfo"], **over}}


NODE1 = ResourceInfo("node1", "active", facts(), ("ssd",), ("public-a",), {"public-a": 3})
NODE2 = ResourceInfo("node2", "active", facts(), ("ssd", "hdd"), ("public-a", "public-b"),
                     {"public-a": 1, "public-b": 2})
DISK = DiskInfo("/var/lib/libvirt/images/web.qcow2", "qcow2", "file-qcow2",
                virtual_size=10 * GIB, allocation=2 * GIB, storage_tag="ssd")
WEB = ServerInfo("web", "running", "node1", vcpus=2, memory_mib=1024, disks=(DISK,),
                 ip_addresses=(IpAddress("10.0.0.5", "public-a"),))
DB = replace(WEB, name="db", ip_addresses=(IpAddress("10.0.0.6", "public-a"),
                                           IpAddress("10.0.1.6", "public-b")))


def test_it_maps_formats_and_pools_to_storage_types():
    assert storage_type_of("raw", "dir") == "file-raw"
    assert storage_type_of("qcow2", "fs") == "file-qcow2"
    assert storage_type_of("raw", "logical") == "lvm"
    assert storage_type_of("raw", "thinlvm") == "thinlvm"
    with pytest.raises(ValueError):
        storage_type_of("qcow2", "logical")


def test_it_compares_os_versions_numerically():
    assert version_tuple("11") < version_tuple("12") < version_tuple("12.1")
    assert version_tuple("9.10") > version_tuple("9.9")


def test_it_counts_disks_in_the_target_format():
    assert target_disk_bytes(DISK, "file-raw") == 10 * GIB
    assert target_disk_bytes(DISK, "lvm") == 10 * GIB
    assert target_disk_bytes(DISK, "thinlvm") == 2 * GIB
    assert 2 * GIB < target_disk_bytes(DISK, "file-qcow2") < 2 * GIB + 4 * 2 ** 20


def test_it_passes_servers_in_the_same_state():
    assert check_same_state([WEB, DB]).status == PASS


def test_it_fails_servers_in_different_states():
    result = check_same_state([WEB, replace(DB, state="stopped")])
    assert result.status == FAIL
    assert "different states" in result.message and "web is running, db is stopped" in result.message


def test_it_checks_the_state_fits_the_mode():
    assert check_state_fits_mode([WEB], LIVE).status == PASS
    offline = check_state_fits_mode([WEB], OFFLINE)
    assert offline.status == FAIL and "Stop them first" in offline.message


def test_it_fails_when_destination_is_a_source():
    assert check_destination_not_source([WEB], NODE2).status == PASS
    result = check_destination_not_source([WEB, replace(DB, resource="node2")], NODE2)
    assert result.status == FAIL and result.message.startswith("db already runs on node2")


def test_it_fails_an_inactive_destination():
    assert check_destination_active(NODE2).status == PASS
    result = check_destination_active(replace(NODE2, status="maintenance"))
    assert result.status == FAIL and "node2 is maintenance" in result.message


def test_it_passes_preserve_ip_when_the_block_is_assigned():
    assert check_ip_addresses(DB, NODE2, LIVE).status == PASS


def test_it_fails_preserve_ip_when_the_block_is_not_assigned():
    result = check_ip_addresses(DB, NODE1, LIVE)
    assert result.status == FAIL and "public-b is not assigned to node1" in result.message


def test_it_counts_free_addresses_for_an_ip_change():
    change = MigrationOptions(live=False, preserve_ip=False)
    assert check_ip_addresses(DB, NODE2, change).status == PASS  # 2 needed, 3 free
    result = check_ip_addresses(DB, NODE2, change, claimed=2)  # earlier servers took 2
    assert result.status == FAIL and "have 1 free" in result.message


def test_it_fails_a_server_with_snapshots():
    assert check_snapshots(WEB).status == PASS
    result = check_snapshots(replace(WEB, snapshot_count=2))
    assert result.status == FAIL and "delete them" in result.message


def test_it_passes_ports_that_answered():
    result = check_ports({8081: "ok", 49152: True, 49153: "OK"}, "node1", "node2")
    assert result.status == PASS and result.data["ok"] == [8081, 49152, 49153]


def test_it_fails_a_blocked_or_unprobed_port():
    result = check_ports({8081: "ok", 49153: "Connection refused"}, "node1", "node2")
    assert result.status == FAIL
    assert result.data["failed"] == {49152: "not probed", 49153: "Connection refused"}
    assert "node1 cannot reach node2 on TCP 49152, 49153" in result.message


def test_it_passes_memory_and_warns_on_thin_headroom():
    assert check_memory([WEB, DB], NODE2, LIVE).status == PASS
    tight = replace(NODE2, facts=facts(memory={"total_mib": 4096, "free_mib": 2200}))
    assert check_memory([WEB, DB], tight, LIVE).status == WARN


def test_it_fails_memory_live_but_only_warns_offline():
    small = replace(NODE2, facts=facts(memory={"total_mib": 2048, "free_mib": 1500}))
    assert check_memory([WEB, DB], small, LIVE).status == FAIL
    offline = check_memory([WEB, DB], small, OFFLINE)
    assert offline.status == WARN and "arrive stopped" in offline.message


def test_it_warns_when_facts_are_missing():
    bare = replace(NODE2, facts={})
    assert check_memory([WEB], bare, LIVE).status == WARN
    assert check_disk_space([WEB], bare, LIVE).status == WARN


def test_it_counts_disk_space_in_the_target_format():
    # Two 10 GiB disks holding 2 GiB each: ~4 GiB as qcow2, 20 GiB as raw.
    pool = [{"name": "default", "type": "dir", "capacity_bytes": 100 * GIB,
             "free_bytes": 15 * GIB}]
    node = replace(NODE2, facts=facts(storage_pools=pool))
    assert check_disk_space([WEB, DB], node, LIVE).status == PASS
    raw = check_disk_space([WEB, DB], node, MigrationOptions(convert_to="file-raw"))
    assert raw.status == FAIL and "need 20.0 GiB" in raw.message


def test_it_warns_when_the_pool_would_be_nearly_full():
    pool = [{"name": "default", "type": "dir", "capacity_bytes": 100 * GIB,
             "free_bytes": 24 * GIB}]
    node = replace(NODE2, facts=facts(storage_pools=pool))
    result = check_disk_space([WEB, DB], node, MigrationOptions(convert_to="file-raw"))
    assert result.status == WARN


def test_it_fails_without_a_volume_group_for_the_target_type():
    # A disk going to LVM is counted against the volume group (lvm-space), not a file pool.
    options = MigrationOptions(live=False, convert_to="lvm")
    assert "every disk goes to LVM" in check_disk_space([WEB], NODE2, options).message
    no_group = replace(NODE2, facts={**NODE2.facts, "lvm": {"volume_groups": [],
                                                          "thin_pools": []}})
    result = check_lvm_space([WEB], no_group, options)
    assert result.status == FAIL and "no LVM volume group" in result.message


def test_it_checks_storage_tags():
    assert check_storage_tags(WEB, NODE2).status == PASS
    untagged = replace(WEB, disks=(replace(DISK, storage_tag=None),))
    assert check_storage_tags(untagged, NODE1).status == PASS
    nvme = replace(WEB, disks=(replace(DISK, storage_tag="nvme"),))
    result = check_storage_tags(nvme, NODE2)
    assert result.status == FAIL and "nvme" in result.message


def test_it_passes_nbd_when_not_converting_or_loaded():
    assert check_nbd(NODE1, NODE2, OFFLINE).status == PASS
    assert check_nbd(NODE1, NODE2, MigrationOptions(live=False, convert_to="file-raw")).status == PASS


def test_it_only_informs_when_nbd_is_missing_since_ferry_reads_over_tcp():
    no_nbd = replace(NODE2, facts=facts(nbd_module=False))
    result = check_nbd(NODE1, no_nbd, MigrationOptions(live=False, convert_to="file-raw"))
    assert result.status == INFO
    assert "Ferry does not need it" in result.message and "node2" in result.message
    # Information asks for nothing: the group may start unacknowledged, the summary says pass.
    summary = summarize([CheckResult("state", PASS, ""), result])
    assert summary.status == PASS and not summary.needs_acknowledgement
    assert summary.counts[INFO] == 1 and summary.warned == ()
    assert may_start([result], acknowledged=False)


def test_it_checks_the_os_distribution():
    assert check_os_distribution(NODE1, NODE2).status == PASS
    ubuntu = replace(NODE2, facts=facts(os={"id": "ubuntu", "version_id": "24.04"}))
    assert check_os_distribution(NODE1, ubuntu).status == FAIL
    assert check_os_distribution(NODE1, replace(NODE2, facts={})).status == WARN


def test_it_checks_the_destination_os_version_is_equal_or_newer():
    newer = replace(NODE2, facts=facts(os={"id": "debian", "version_id": "12.1"}))
    assert check_os_version(NODE1, newer).status == PASS
    older = replace(NODE2, facts=facts(os={"id": "debian", "version_id": "11"}))
    result = check_os_version(NODE1, older)
    assert result.status == FAIL and "older than 12" in result.message
    assert check_os_version(NODE1, replace(NODE2, facts={})).status == WARN


def test_it_checks_the_cpu_vendor_from_cpuinfo_and_libvirt():
    assert check_cpu_vendor(NODE1, NODE2).status == PASS
    amd = replace(NODE2, facts=facts(cpu={**cpuinfo(vendor_id="AuthenticAMD"), "vendor": "AMD"}))
    result = check_cpu_vendor(NODE1, amd)
    assert result.status == FAIL and "GenuineIntel vs AuthenticAMD" in result.message
    # A faked /proc/cpuinfo alone is enough to refuse.
    faked = replace(NODE2, facts=facts(cpu=cpuinfo(vendor_id="AuthenticAMD")))
    assert check_cpu_vendor(NODE1, faked).status == FAIL
    assert check_cpu_vendor(NODE1, replace(NODE2, facts={})).status == WARN


def test_it_checks_the_cpu_family():
    assert check_cpu_family(NODE1, NODE2).status == PASS
    other = replace(NODE2, facts=facts(cpu=cpuinfo(family="25")))
    assert check_cpu_family(NODE1, other).status == FAIL
    assert check_cpu_family(NODE1, replace(NODE2, facts={})).status == WARN


@pytest.mark.parametrize("code,status", [
    (CPU_COMPARE_IDENTICAL, PASS), (CPU_COMPARE_SUPERSET, PASS),
    (CPU_COMPARE_INCOMPATIBLE, FAIL), (CPU_COMPARE_ERROR, FAIL), (None, FAIL),
])
def test_it_turns_compare_hypervisor_cpu_into_a_check(code, status):
    result = check_cpu_compatibility("web", "node2", code, "missing avx512f")
    assert result.status == status
    if status == FAIL:
        assert "offline" in result.message


def test_it_checks_nested_virtualization_matches():
    assert check_nested_virtualization(NODE1, NODE2).status == PASS
    nested = replace(NODE2, facts=facts(nested_virtualization=True))
    result = check_nested_virtualization(NODE1, nested)
    assert result.status == FAIL and "off on node1 and on on node2" in result.message
    assert check_nested_virtualization(NODE1, replace(NODE2, facts={})).status == WARN


def test_it_allows_live_conversion_between_file_types_only():
    assert check_live_conversion([WEB], MigrationOptions(convert_to="file-raw")).status == PASS
    assert check_live_conversion([WEB], MigrationOptions(live=False, convert_to="lvm")).status == PASS
    for target in ("lvm", "thinlvm"):
        result = check_live_conversion([WEB], MigrationOptions(convert_to=target))
        assert result.status == FAIL and "offline" in result.message
    on_lvm = replace(WEB, disks=(replace(DISK, storage_type="lvm", format="raw"),))
    assert check_live_conversion([on_lvm], MigrationOptions(convert_to="file-qcow2")).status == FAIL


def test_it_warns_when_a_conversion_orphans_thinlvm_incremental_backups():
    backed = replace(WEB, backups=(BackupInfo("full", "thinlvm", "web-full.img"),
                                   BackupInfo("incremental", "thinlvm", "web-inc-1.img")))
    assert check_backups(backed, LIVE).status == PASS
    assert check_backups(backed, MigrationOptions(live=False, convert_to="thinlvm")).status == PASS
    result = check_backups(backed, MigrationOptions(live=False, convert_to="lvm"))
    assert result.status == WARN and "1 of its 2 backups" in result.message
    assert "web-inc-1.img" in result.message and "web-full.img" not in result.message
    assert result.data["unrestorable"] == ["web-inc-1.img"]


# The reference's table, every cell: (taken on, kind) -> the server types it restores onto.
TABLE = {("thinlvm", "full"): {"thinlvm", "lvm", "file-raw", "file-qcow2"},
         ("thinlvm", "incremental"): {"thinlvm"},
         ("lvm", "full"): {"thinlvm", "lvm", "file-raw", "file-qcow2"},
         ("file-raw", "full"): {"thinlvm", "lvm", "file-raw", "file-qcow2"},
         ("file-qcow2", "full"): {"thinlvm", "lvm", "file-raw", "file-qcow2"}}


@pytest.mark.parametrize("taken_on, kind", sorted(TABLE))
@pytest.mark.parametrize("target", ["thinlvm", "lvm", "file-raw", "file-qcow2"])
def test_it_applies_every_cell_of_the_backup_table(taken_on, kind, target):
    server = replace(WEB, backups=(BackupInfo(kind, taken_on, "b1"),))
    result = check_backups(server, MigrationOptions(live=False, convert_to=target))
    assert result.status == (PASS if target in TABLE[(taken_on, kind)] else WARN)


def test_it_attributes_backup_files_to_the_server_they_are_named_after():
    servers = ["web", "web1", "web-1", "db"]
    assert backup_file_owner("web1.qcow2", servers) == "web1"
    assert backup_file_owner("web-1-2026-11-29.qcow2", servers) == "web-1"  # the longest name
    assert backup_file_owner("web-2026-11-29.qcow2", servers) == "web"
    assert backup_file_owner("web1/full.qcow2", servers) == "web1"  # a folder named after it
    assert backup_file_owner("web", servers) == "web"
    assert backup_file_owner("web10.qcow2", servers) is None
    assert backup_file_owner("other/web1.qcow2", servers) == "web1"  # named after it, one deep
    assert backup_file_owner("webserver.qcow2", servers) is None
    assert backup_kind("web1-inc3.qcow2") == backup_kind("web1/INCR.img") == "incremental"
    assert backup_kind("web1-2026-11-29.qcow2") == backup_kind("web1-incoming.qcow2") == "full"


def test_it_reads_a_servers_backups_from_its_nodes_facts():
    node = facts(checkpoints={"u-web": ["cp2", "cp1"], "u-db": ["db-cp"]},
                 backup_dir={"path": "/b", "free_bytes": GIB, "files_cut": False,
                             "files": [{"name": "web-inc-1.img", "size": 1},
                                       {"name": "web1.img", "size": 1},
                                       {"name": "db.qcow2", "size": 1}]})
    thin = (replace(DISK, storage_type="thinlvm", format="raw"),)
    found = node_backups("web", "u-web", thin, node, ["web", "web1", "db"])
    assert [(b.origin, b.name, b.kind, b.storage_type) for b in found] == [
        ("checkpoint", "cp2", "incremental", "thinlvm"),
        ("checkpoint", "cp1", "incremental", "thinlvm"),
        ("file", "web-inc-1.img", "incremental", "thinlvm")]
    assert node_backups("web", "u-other", (DISK,), facts(), ["web"]) == ()  # nothing shown
    broken = facts(checkpoints="garbage", backup_dir={"files": [{"name": 3}, "x"]})
    assert node_backups("web", "u-web", (DISK,), broken, ["web"]) == ()


def test_it_warns_of_checkpoints_and_backup_files_on_any_move_and_not_without_them():
    bare = replace(WEB, state="stopped")
    assert check_checkpoints(bare).status == check_backup_files(bare).status == PASS
    with_both = replace(bare, backups=(BackupInfo("incremental", "file-qcow2", "cp1", "checkpoint"),
                                       BackupInfo("full", "file-qcow2", "web.qcow2", "file")))
    checkpoints, files = check_checkpoints(with_both), check_backup_files(with_both)
    assert checkpoints.status == WARN and "cp1" in checkpoints.message
    assert "node1" in checkpoints.message and "full backup" in checkpoints.message
    assert files.status == WARN and "web.qcow2" in files.message
    assert "stay on node1" in files.message
    assert "cp1" not in files.message and "web.qcow2" not in checkpoints.message
    for options in (OFFLINE, MigrationOptions(live=False, convert_to="file-raw")):
        results = run_database_checks([with_both], NODE2, options)
        warned = {r.name for r in results if r.status == WARN}
        assert {"checkpoints", "backup-files"} <= warned
        assert {r.name for r in run_database_checks([bare], NODE2, options)
                if r.status == WARN} == set()


def test_it_warns_when_the_backup_directory_cannot_hold_the_allocated_size():
    stopped = replace(WEB, state="stopped")  # 2 GiB allocated of 10 GiB, file QCOW2
    to_raw = MigrationOptions(live=False, convert_to="file-raw")
    assert check_backup_restore_space(stopped, NODE2, OFFLINE).status == PASS  # no conversion
    assert check_backup_restore_space(stopped, NODE2, MigrationOptions(
        live=False, convert_to="file-qcow2")).status == PASS  # stays qcow2
    assert check_backup_restore_space(stopped, NODE2, to_raw).status == PASS  # 2 <= 20 GiB
    small = replace(NODE2, facts=facts(backup_dir={"path": "/b", "free_bytes": GIB}))
    for target in ("file-raw", "lvm", "thinlvm"):
        result = check_backup_restore_space(stopped, small, MigrationOptions(live=False,
                                                                              convert_to=target))
        assert result.status == WARN and "2.0 GiB allocated" in result.message, result.message
        assert "/b" in result.message and "1.0 GiB free" in result.message
    raw = replace(stopped, disks=(replace(DISK, format="raw", storage_type="file-raw"),))
    assert check_backup_restore_space(raw, small, MigrationOptions(
        live=False, convert_to="lvm")).status == PASS  # raw backups need no temporary copy
    unknown = replace(NODE2, facts=facts(backup_dir={"path": "/b", "free_bytes": None}))
    result = check_backup_restore_space(stopped, unknown, to_raw)
    assert result.status == WARN and "unknown" in result.message


def test_it_summarizes_and_asks_for_acknowledgement():
    ok = CheckResult("a", PASS, "")
    warn = CheckResult("b", WARN, "")
    fail = CheckResult("c", FAIL, "")
    assert summarize([ok]).status == PASS and may_start([ok], acknowledged=False)
    summary = summarize([ok, warn])
    assert (summary.status, summary.needs_acknowledgement, summary.warned) == (WARN, True, ("b",))
    assert not may_start([ok, warn], acknowledged=False)
    assert may_start([ok, warn], acknowledged=True)
    assert summarize([ok, warn, fail]).failed == ("c",)
    assert not may_start([ok, warn, fail], acknowledged=True)


def test_it_runs_every_check_for_a_live_group():
    results = run_checks([WEB, DB], {"node1": NODE1}, NODE2, LIVE,
                         port_probes={"node1": {8081: "ok", 49152: "ok"}},
                         cpu_results={"web": (CPU_COMPARE_IDENTICAL, None),
                                      "db": (CPU_COMPARE_SUPERSET, None)})
    assert summarize(results).status == PASS, [r for r in results if r.status != PASS]
    names = {r.name for r in results}
    assert {"cpu-compatibility", "os-version", "ports", "disk-space"} <= names


def test_it_runs_no_live_only_checks_offline():
    stopped = [replace(WEB, state="stopped")]
    results = run_checks(stopped, {"node1": NODE1}, NODE2, OFFLINE,
                         port_probes={"node1": {8081: "ok", 49152: "ok"}})
    names = {r.name for r in results}
    assert "cpu-compatibility" not in names and "os-distribution" not in names
    assert summarize(results).status == PASS

"""The lab's LVM node is real: a VM with its own kernel, LVM, thin LVM and libvirt on block disks."""
import json
import subprocess

import pytest

pytestmark = pytest.mark.lab
GIB = 1 << 30


def lvs(lab, *names):
    """{lv_name: row} from lvs inside the LVM node (sizes in bytes)."""
    proc = lab.exec("lvm1", "lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
                    "-o", "lv_name,segtype,pool_lv,lv_size,data_percent", *names, check=True)
    return {row["lv_name"]: row for row in json.loads(proc.stdout)["report"][0]["lv"]}


def seed_md5_on(lab, device):
    """The md5 of the seed file inside the ext4 image on a device of the LVM node."""
    proc = lab.exec("lvm1", "sh", "-c", 'debugfs -R "cat /seed" "$1" 2>/dev/null | md5sum',
                    "seed", device, check=True)
    return proc.stdout.split()[0]


def test_it_lists_the_lvm_node_as_a_vm_with_its_volume_group(lvm_lab):
    node = lvm_lab.node("lvm1")
    assert node["kind"] == "vm"
    assert node["lvm"] == {"vg": "ferry", "thin_pool": "thinpool"}
    assert (node["port"], node["user"]) == (22, "root")
    assert node["processes"] == {"qemu": "running", "sshd": "running"}
    assert all(n["kind"] == "namespace" for n in lvm_lab.status["nodes"] if n is not node)


def test_it_reaches_the_lvm_node_with_its_pinned_key_and_refuses_another(lvm_lab, tmp_path):
    node = lvm_lab.node("lvm1")
    proc = lvm_lab.ssh("lvm1", "hostname")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "lvm1"
    listed = subprocess.run(["ssh-keygen", "-l", "-F", node["address"],
                             "-f", lvm_lab.status["known_hosts"]],
                            capture_output=True, text=True).stdout
    assert node["host_key_fingerprint"] in listed
    # node1's key pinned for lvm1's address: ssh must refuse to talk to it.
    with open(lvm_lab.status["known_hosts"]) as f:
        node1_key = next(line.split(None, 1)[1] for line in f
                         if line.startswith(lvm_lab.node("node1")["address"] + " "))
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{node['address']} {node1_key}")
    refused = subprocess.run(
        ["ssh", "-i", lvm_lab.status["ssh_key"], "-o", "IdentitiesOnly=yes",
         "-o", f"UserKnownHostsFile={wrong}", "-o", "StrictHostKeyChecking=yes",
         "-o", "BatchMode=yes", f"root@{node['address']}", "hostname"],
        capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "lvm1" not in refused.stdout
    assert "host key" in refused.stderr.lower() or "identification" in refused.stderr.lower()
    # Node to node, as migration traffic goes: a namespace node reaches lvm1 by its key.
    proc = lvm_lab.ssh("node1", f"ssh -o BatchMode=yes {node['address']} hostname")
    assert proc.stdout.strip() == "lvm1", proc.stderr


def test_it_has_the_volume_group_with_a_thin_pool(lvm_lab):
    vgs = json.loads(lvm_lab.exec("lvm1", "vgs", "--reportformat", "json", "--units", "b",
                                  "--nosuffix", "-o", "vg_name,vg_size,vg_free", "ferry",
                                  check=True).stdout)["report"][0]["vg"]
    assert [vg["vg_name"] for vg in vgs] == ["ferry"]
    assert int(vgs[0]["vg_free"]) >= 4 * GIB  # room for thick volumes beside the pool
    pool = lvs(lvm_lab, "ferry/thinpool")["thinpool"]
    assert pool["segtype"] == "thin-pool" and int(pool["lv_size"]) >= 4 * GIB


def test_it_writes_a_thin_server_that_stays_thin(lvm_lab, lab_server):
    server = lab_server("lvm1", "lvm-thin", stopped=True, storage="thinlvm")
    assert server["disk"] == {"path": "/dev/ferry/lvm-thin", "format": "raw",
                              "virtual_size": GIB, "storage": "thinlvm"}
    row = lvs(lvm_lab, "ferry/lvm-thin")["lvm-thin"]
    assert (row["segtype"], row["pool_lv"], int(row["lv_size"])) == ("thin", "thinpool", GIB)
    # --target-is-zero: the 16 MiB seed and the file system's metadata, not 1 GiB.
    assert float(row["data_percent"]) < 10.0
    assert seed_md5_on(lvm_lab, server["disk"]["path"]) == server["seed_md5"]


def test_it_defines_a_block_disk_domain_on_a_logical_volume_and_removes_it(lvm_lab, lab_server):
    server = lab_server("lvm1", "lvm-thick", stopped=True, storage="lvm")
    row = lvs(lvm_lab, "ferry/lvm-thick")["lvm-thick"]
    assert (row["segtype"], int(row["lv_size"])) == ("linear", GIB)
    xml = lvm_lab.exec("lvm1", "virsh", "dumpxml", "lvm-thick", check=True).stdout
    assert "<disk type='block' device='disk'>" in xml
    assert "<source dev='/dev/ferry/lvm-thick'/>" in xml
    assert [s["state"] for s in lvm_lab.servers() if s["name"] == "lvm-thick"] == ["shut off"]
    assert seed_md5_on(lvm_lab, "/dev/ferry/lvm-thick") == server["seed_md5"]

    lvm_lab.rmserver("lvm-thick")

    assert "lvm-thick" not in lvs(lvm_lab)
    assert not [s for s in lvm_lab.servers() if s["name"] == "lvm-thick"]


def test_it_refuses_a_running_server_or_lvm_storage_where_they_cannot_work(lvm_lab):
    running = lvm_lab.cli("mkserver", "lvm1", "lvm-running", "--storage", "lvm", check=False)
    assert running.returncode != 0 and "--stopped" in running.stderr
    on_namespace = lvm_lab.cli("mkserver", "node1", "ns-lvm", "--stopped", "--storage", "lvm",
                               check=False)
    assert on_namespace.returncode != 0 and "LVM node" in on_namespace.stderr
    assert "lvm-running" not in lvs(lvm_lab)

"""The lab is real: SSH between nodes, real libvirt migrations, real faults, a clean down."""
import json
import os
import subprocess
import time

import pytest

from lab.common import pid_alive
from tests.fixtures.lab import FERRY_LAB, ROOT, Lab, lab_env

pytestmark = pytest.mark.lab
FIXTURES = os.path.join(ROOT, "lab", "fixtures")


def migrate(lab, server, source, dest, timeout=120):
    """A bare p2p live migration with storage copy, run by virsh on the source node."""
    lab.exec(dest, "qemu-img", "create", "-q", "-f", server["disk"]["format"],
             server["disk"]["path"], str(server["disk"]["virtual_size"]), check=True)
    uri = f"qemu+ssh://root@{lab.node(dest)['address']}/system"
    return lab.exec(source, "virsh", "migrate", "--live", "--p2p", "--copy-storage-all",
                    "--persistent", "--undefinesource", server["name"], uri, timeout=timeout)


def state_on(lab, node, name):
    """The domain's state on a node ('' when it is not defined there)."""
    return next((s["state"] for s in lab.servers()
                 if s["node"] == node and s["name"] == name), "")


def test_it_reaches_every_node_over_ssh_with_pinned_host_keys(lab):
    for node in lab.status["nodes"]:
        proc = lab.ssh(node["name"], "hostname")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == node["name"]
        listed = subprocess.run(["ssh-keygen", "-l", "-F", node["address"],
                                 "-f", lab.status["known_hosts"]],
                                capture_output=True, text=True).stdout
        assert node["host_key_fingerprint"] in listed
    # Node to node, as libvirt's p2p migration does it: no prompt, keys pinned.
    proc = lab.ssh("node1", f"ssh -o BatchMode=yes {lab.node('node2')['address']} hostname")
    assert proc.stdout.strip() == "node2", proc.stderr


def test_it_live_migrates_a_running_server_and_it_keeps_answering_on_its_ip(lab, lab_server):
    server = lab_server("node1", "lab-live", memory=256)
    assert lab.wait_for_guest(server["ip"])["seed_md5_ok"]
    before = lab.guest_status(server["ip"])["heartbeat"]

    proc = migrate(lab, server, "node1", "node2")

    assert proc.returncode == 0, proc.stderr
    assert state_on(lab, "node2", "lab-live") == "running"
    assert state_on(lab, "node1", "lab-live") == ""
    assert lab.ping(server["ip"], count=3, timeout=2)
    after = lab.guest_status(server["ip"])
    assert after["ip"].split("/")[0] == server["ip"]
    assert after["seed_md5_ok"] and after["heartbeat"] >= before


def test_it_fails_a_migration_over_a_link_that_is_down(lab, lab_server):
    server = lab_server("node1", "lab-linkdown", memory=128)
    lab.exec("node2", "qemu-img", "create", "-q", "-f", "qcow2", server["disk"]["path"], "1G")
    lab.cli("link", "node2", "down")
    try:
        started = time.time()
        uri = f"qemu+ssh://root@{lab.node('node2')['address']}/system"
        proc = lab.exec("node1", "virsh", "migrate", "--live", "--p2p", "--copy-storage-all",
                        "--persistent", "--undefinesource", "lab-linkdown", uri, timeout=90)
    finally:
        lab.cli("link", "node2", "up")
    assert proc.returncode != 0
    assert time.time() - started < 60
    assert state_on(lab, "node1", "lab-linkdown") == "running"
    assert state_on(lab, "node2", "lab-linkdown") == ""


def test_it_fails_a_migration_when_the_migration_port_is_blocked(lab, lab_server):
    server = lab_server("node1", "lab-blocked", memory=128)
    lab.cli("block", "node2", "49152")
    try:
        proc = migrate(lab, server, "node1", "node2", timeout=90)
    finally:
        lab.cli("unblock", "node2", "49152")
    # The source's libvirtd logs "Connection refused" on 49152; virsh may only see the EOF.
    assert proc.returncode != 0
    assert state_on(lab, "node1", "lab-blocked") == "running"


def test_it_shows_an_overridden_os_release_and_cpuinfo_over_ssh(lab):
    lab.cli("override", "node3", "os-release", os.path.join(FIXTURES, "os-release-debian11"))
    lab.cli("override", "node3", "cpuinfo", os.path.join(FIXTURES, "cpuinfo-amd-epyc"))
    try:
        assert 'VERSION_ID="11"' in lab.ssh("node3", "cat /etc/os-release").stdout
        assert "AMD EPYC" in lab.ssh("node3", "grep -m1 'model name' /proc/cpuinfo").stdout
        assert 'VERSION_ID="12"' in lab.ssh("node1", "cat /etc/os-release").stdout
        node3 = json.loads(lab.cli("status", "--json").stdout)["nodes"][2]
        assert node3["overrides"]["os-release"].endswith("os-release-debian11")
    finally:
        lab.cli("override", "node3", "os-release", "--clear")
        lab.cli("override", "node3", "cpuinfo", "--clear")
    assert 'VERSION_ID="12"' in lab.ssh("node3", "cat /etc/os-release").stdout


def test_it_handles_server_names_with_shell_metacharacters(lab, lab_server, tmp_path):
    for name in ("db;touch x", "web$(id)"):
        server = lab_server("node1", name, stopped=True, format="raw")
        path = server["disk"]["path"]
        assert os.path.basename(path).replace("-", "").replace(".", "").isalnum()
        assert lab.exec("node1", "test", "-f", path).returncode == 0
        assert state_on(lab, "node1", name) == "shut off"
        lab.rmserver(name)
        assert state_on(lab, "node1", name) == ""
        assert lab.exec("node1", "test", "-e", path).returncode == 1
    assert not os.path.exists(os.path.join(ROOT, "x"))


def test_it_passes_the_exit_status_of_exec_through(lab):
    assert lab.exec("node2", "sh", "-c", "exit 7").returncode == 7
    assert lab.exec("node2", "hostname").stdout.strip() == "node2"


def netns_pids(netns):
    return subprocess.run(["ip", "netns", "pids", netns], capture_output=True,
                          text=True).stdout.split()


def test_it_rebuilds_a_killed_lab_and_down_leaves_nothing_behind():
    name, net = "ferrydown", 76
    env = lab_env(name, net)
    subprocess.run([FERRY_LAB, "up", "--nodes", "1"], env=env, check=True, timeout=600)
    # As after a reboot or CI's cleanup: every process SIGKILLed, namespaces left over.
    for pid in netns_pids(f"{name}-n1"):
        os.kill(int(pid), 9)
    assert Lab(name, net).status["up"] is False
    subprocess.run([FERRY_LAB, "up", "--nodes", "1"], env=env, check=True, timeout=600)
    down_lab = Lab(name, net)
    assert down_lab.status["up"] is True
    down_lab.mkserver("node1", "down-probe", memory=64)
    pids = netns_pids(f"{name}-n1")
    assert len(pids) >= 5  # holder, virtlogd, libvirtd, sshd, qemu

    subprocess.run([FERRY_LAB, "down"], env=env, check=True, timeout=120)

    assert f"{name}-" not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                            text=True).stdout
    with open("/proc/mounts") as f:
        assert f"/var/lib/ferry-lab/{name}/" not in f.read()
    assert not [p for p in pids if pid_alive(p)]  # zombies wait for PID 1 to reap them
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"/ferry-lab/{name}/" not in ps
    assert not [i for i in os.listdir("/sys/class/net") if i.startswith(f"{name}-")]
    assert json.loads(subprocess.run([FERRY_LAB, "status", "--json"], env=env,
                                     capture_output=True, text=True).stdout)["up"] is False

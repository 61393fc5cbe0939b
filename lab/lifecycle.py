"""`up`, `down` and `status` of a lab instance."""
import json
import os
import re
import shutil
import time

from . import deps, guest, net
from .common import LAB_DIR, MAX_LVM_NODES, LabError, kill_pids, run, write_file
from .lvmnode import LvmNode, lvm_count, lvm_nodes
from .nodes import OVERRIDES, Node

DEFAULT_FIXTURES = os.path.join(LAB_DIR, "fixtures.json")


def nodes_of(inst, state=None):
    """The Node objects of the instance, from its state (or its leftover netns)."""
    state = state if state is not None else inst.load()
    ks = set(range(1, state.get("nodes", 0) + 1))
    for line in run(["ip", "netns", "list"], check=False).stdout.splitlines():
        m = re.fullmatch(rf"{inst.name}-n(\d+)", line.split()[0]) if line.split() else None
        if m:
            ks.add(int(m.group(1)))
    if os.path.isdir(inst.nodes_dir):
        ks |= {int(d[4:]) for d in os.listdir(inst.nodes_dir) if re.fullmatch(r"node\d+", d)}
    return [Node(inst, k) for k in sorted(ks)]


def _existing_lvm_nodes(inst):
    """Every LVM node that may have left something: lvm1 (as before), the others by folder."""
    vms = [LvmNode(inst, k) for k in range(1, MAX_LVM_NODES + 1)]
    return [vm for vm in vms if vm.k == 1 or os.path.isdir(vm.dir)]


def _ensure_keys(inst, count, lvm=0):
    os.makedirs(inst.keys_dir, exist_ok=True)
    if not os.path.exists(inst.client_key):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"ferry-lab-{inst.name}",
             "-f", inst.client_key])
    lines = []
    for node in [Node(inst, k) for k in range(1, count + 1)] + lvm_nodes(inst, int(lvm)):
        if not os.path.exists(node.host_key):
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", node.name,
                 "-f", node.host_key])
        with open(node.host_key + ".pub") as f:
            keytype, key = f.read().split()[:2]
        lines.append(f"{node.address} {keytype} {key}\n")
    write_file(inst.known_hosts, "".join(lines))
    return "".join(lines)


def _node_set(spec, count):
    """'1-3' / '3-' / '2' / [1, 2] -> node numbers within 1..count."""
    if isinstance(spec, list):
        return [k for k in spec if 1 <= k <= count]
    out = []
    for part in str(spec).split(","):
        lo, _, hi = part.partition("-")
        lo = int(lo)
        hi = int(hi) if hi else (count if "-" in part else lo)
        out += range(lo, min(hi, count) + 1)
    return sorted(set(out))


def load_fixtures(path, inst, count, lvm=0):
    """The storage tags per node and the IP blocks, resolved for this instance.

    The LVM nodes (lvm: how many) join the blocks marked "lvm_node": true.
    """
    with open(path) as f:
        raw = json.load(f)
    tags = raw.get("storage_tags", {})
    vms = [vm.name for vm in lvm_nodes(inst, int(lvm))]
    names = [f"node{k}" for k in range(1, count + 1)] + vms
    per_node = {name: tags.get(name, tags.get("default", [])) for name in names}
    blocks = []
    for b in raw.get("ip_blocks", []):
        members = [f"node{k}" for k in _node_set(b["nodes"], count)]
        if b.get("lvm_node"):
            members += vms
        blocks.append({"name": b["name"], "cidr": b["cidr"].format(net=inst.net),
                       "gateway": b["gateway"].format(net=inst.net), "nodes": members})
    return {"storage_tags": per_node, "ip_blocks": blocks}


def up(inst, count=3, overrides=None, fixtures=None, lvm=0):
    """Bring the instance up (or repair it); a fast no-op when everything is alive.

    lvm: how many LVM nodes to run (lab/lvmnode.py; True is one): lvm1..lvmN. Those
    beyond it are removed, so a lab brought up without them is the same as one that
    never had them.
    """
    lvm = int(lvm)
    vms = lvm_nodes(inst, lvm)
    with inst.lock():
        state = inst.load()
        if (state.get("nodes") == count and not overrides and not fixtures
                and all(n.alive() and n.has_transfer_tls_dirs() for n in nodes_of(inst, state))
                and len(nodes_of(inst, state)) == count
                and lvm_count(state) == lvm and all(vm.alive() for vm in vms)):
            return state
        deps.ensure_lab_deps(bool(lvm))
        for extra in _existing_lvm_nodes(inst):
            if extra.k > lvm:
                extra.remove()
        state.setdefault("overrides", {})
        for n in nodes_of(inst, state):
            if n.k > count:  # the lab shrinks: remove the extra nodes entirely
                n.teardown()
                shutil.rmtree(n.dir, ignore_errors=True)
                state["overrides"].pop(n.name, None)
        for (k, what), path in (overrides or {}).items():
            if not os.path.isfile(path):
                raise LabError(f"--node{k}-{what}: no such file {path}")
            state["overrides"].setdefault(f"node{k}", {})[what] = os.path.abspath(path)
        fixtures = os.path.abspath(fixtures) if fixtures else state.get("fixtures",
                                                                         DEFAULT_FIXTURES)
        state.update({"name": inst.name, "net": inst.net, "nodes": count,
                      "fixtures": fixtures, "lvm_node": bool(lvm), "lvm_nodes": lvm,
                      "inventory": load_fixtures(fixtures, inst, count, lvm)})
        guest_build = guest.build()
        net.ensure_bridge(inst.mgmt_bridge, f"{inst.mgmt_gateway}/24")
        net.ensure_bridge(inst.guest_bridge, f"{inst.guest_gateway}/24")
        known_hosts = _ensure_keys(inst, count, lvm)
        for k in range(1, count + 1):
            node = Node(inst, k)
            wanted = state["overrides"].get(node.name, {})
            node.start(known_hosts, wanted)
            if (k, "os-release") in (overrides or {}) or (k, "cpuinfo") in (overrides or {}):
                for what, path in wanted.items():
                    node.set_override(what, path)
        for vm in vms:  # booted side by side: each takes a minute or more under TCG
            vm.launch(known_hosts, guest_build)
        for vm in vms:
            vm.wait_ready()
            vm.trust(known_hosts)  # lvm1 booted before lvm2 existed does not know its key
        state["up_at"] = time.time()
        inst.save(state)
        return state


def set_override(inst, node, what, path):
    """Apply (path) or clear (None) a runtime override and remember it for rebuilds."""
    if what not in OVERRIDES:
        raise LabError(f"override must be one of {', '.join(OVERRIDES)}")
    with inst.lock():
        state = inst.load()
        if path:
            if not os.path.isfile(path):
                raise LabError(f"no such file {path}")
            node.set_override(what, path)
            state.setdefault("overrides", {}).setdefault(node.name, {})[what] = \
                os.path.abspath(path)
        else:
            node.clear_override(what)
            state.setdefault("overrides", {}).get(node.name, {}).pop(what, None)
        inst.save(state)


def down(inst, purge=False):
    """Stop every process of the instance and remove its namespaces, links and folders."""
    with inst.lock():
        for node in nodes_of(inst):
            node.teardown()
            # Daemons whose namespace entry is already gone (half-dead lab): by pid file.
            kill_pids(node.stray_pids())
        for vm in _existing_lvm_nodes(inst):
            vm.remove()
        for bridge in (inst.mgmt_bridge, inst.guest_bridge):
            net.delete_link(bridge)
        shutil.rmtree(inst.nodes_dir, ignore_errors=True)
        if os.path.exists(inst.state_file):
            os.unlink(inst.state_file)
        if purge:
            shutil.rmtree(inst.dir, ignore_errors=True)


def status(inst):
    """The status document the app, the tests and the demo read (see README.md)."""
    state = inst.load()
    count = state.get("nodes", 0)
    inventory = state.get("inventory") or {"storage_tags": {}, "ip_blocks": []}
    nodes = []
    for k in range(1, count + 1):
        node = Node(inst, k)
        over = state.get("overrides", {}).get(node.name, {})
        nodes.append({
            "name": node.name, "address": node.address, "port": 22, "user": "root",
            "host_key_fingerprint": node.fingerprint() if os.path.exists(node.host_key)
            else None,
            "libvirt_uri": f"qemu+ssh://root@{node.address}/system?keyfile={inst.client_key}"
                           "&no_verify=1",
            "storage_dir": "/var/lib/libvirt/images",
            "storage_tags": inventory["storage_tags"].get(node.name, []),
            "ip_blocks": [b["name"] for b in inventory["ip_blocks"] if node.name in b["nodes"]],
            "overrides": {w: over.get(w) for w in OVERRIDES},
            "processes": node.processes(),
            "kind": "namespace",
            "transfer_tls_dirs": node.has_transfer_tls_dirs(),
        })
    nodes += [_vm_status(inst, vm, inventory) for vm in lvm_nodes(inst, lvm_count(state))]
    return {
        "name": inst.name, "net": inst.net,
        "up": bool(nodes) and all(all(v == "running" for v in n["processes"].values())
                                  for n in nodes),
        "ssh_key": inst.client_key, "known_hosts": inst.known_hosts,
        "guest_network": {"cidr": inst.guest_cidr, "gateway": inst.guest_gateway,
                          "probe_address": inst.guest_gateway},
        "ip_blocks": inventory["ip_blocks"],
        "nodes": nodes,
    }


def _vm_status(inst, vm, inventory):
    """The status entry of the LVM node: a VM, with its volume group and thin pool."""
    return {
        "name": vm.name, "address": vm.address, "port": 22, "user": "root",
        "host_key_fingerprint": vm.fingerprint() if os.path.exists(vm.host_key) else None,
        "libvirt_uri": f"qemu+ssh://root@{vm.address}/system?keyfile={inst.client_key}"
                       "&no_verify=1",
        "storage_dir": "/var/lib/libvirt/images",
        "storage_tags": inventory["storage_tags"].get(vm.name, []),
        "ip_blocks": [b["name"] for b in inventory["ip_blocks"] if vm.name in b["nodes"]],
        "overrides": {w: None for w in OVERRIDES},
        "processes": vm.processes(),
        "kind": vm.kind, "lvm": dict(vm.lvm),
        # The VM's /etc/pki/qemu and /etc/ferry are its own (its own root disk, qemu.conf with
        # migrate_tls_x509_verify): certificates are issued to it like to the namespace nodes.
        "transfer_tls_dirs": bool(vm.qemu_pid()),
    }


def ssh_config(inst):
    """An OpenSSH client config for every node of the instance."""
    out = []
    state = inst.load()
    nodes = [Node(inst, k) for k in range(1, state.get("nodes", 0) + 1)]
    for node in nodes + lvm_nodes(inst, lvm_count(state)):
        out.append(f"Host {node.name} {inst.name}-{node.name}\n  HostName {node.address}\n"
                   f"  User root\n  Port 22\n  IdentityFile {inst.client_key}\n"
                   f"  IdentitiesOnly yes\n  UserKnownHostsFile {inst.known_hosts}\n"
                   "  StrictHostKeyChecking yes\n  ConnectTimeout 5\n")
    return "\n".join(out)

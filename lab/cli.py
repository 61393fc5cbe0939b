"""The `ferry-lab` command line."""
import argparse
import json
import os
import re
import subprocess
import sys
import time

from . import deps, lifecycle, net, servers
from .common import CLEAN_ENV, Instance, LabError
from .lvmnode import LvmNode, lvm_count, lvm_node_number
from .nodes import OVERRIDES, Node, parse_node_names


def _node(inst, name, vm_ok=False):
    k = lvm_node_number(name)
    if k is not None:
        if k > lvm_count(inst.load()):
            raise LabError(f"lab {inst.name} has no {name} (up --lvm-node, or --lvm-nodes N)")
        if not vm_ok:
            raise LabError(f"{name} is the LVM node (a VM): this command is for namespace nodes")
        return LvmNode(inst, k)
    k = parse_node_names(name)
    if k > inst.load().get("nodes", 0):
        raise LabError(f"lab {inst.name} has no {name}")
    return Node(inst, k)


def _print_json(obj):
    print(json.dumps(obj, indent=2))


def parser():
    p = argparse.ArgumentParser(prog="ferry-lab", description="Ferry's lab of libvirt nodes. "
                                "FERRY_LAB_NAME / FERRY_LAB_NET select the instance.")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="bring the lab up (idempotent); also --nodeK-os-release "
                        "PATH, --nodeK-cpuinfo PATH")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--fixtures", help="inventory fixtures JSON (default lab/fixtures.json)")
    up.add_argument("--lvm-node", action="store_true",
                    help="also run lvm1, a Debian VM with a volume group and a thin pool")
    up.add_argument("--lvm-nodes", type=int, metavar="N",
                    help="run N such VMs, lvm1..lvmN (a move between LVM nodes needs two)")
    down = sub.add_parser("down", help="stop and remove everything the lab made")
    down.add_argument("--purge", action="store_true", help="also forget the SSH keys")
    st = sub.add_parser("status")
    st.add_argument("--json", action="store_true")
    sub.add_parser("install-deps", help="apt-get install what is missing")
    sub.add_parser("ssh-config", help="print an OpenSSH client config for the nodes")
    ex = sub.add_parser("exec", help="run a command inside a node")
    ex.add_argument("node")
    ex.add_argument("argv", nargs=argparse.REMAINDER)
    mk = sub.add_parser("mkserver", help="define and start a tiny guest on a node")
    mk.add_argument("node")
    mk.add_argument("name")
    mk.add_argument("--memory", type=int, default=256, help="MiB")
    mk.add_argument("--disk", default="1", help="size: GiB (1, 2G) or MiB (256M)")
    mk.add_argument("--fill", type=int, default=0,
                    help="MiB of random data in the guest's filesystem (the file /fill)")
    mk.add_argument("--format", choices=["raw", "qcow2"], default="qcow2")
    mk.add_argument("--dirty-rate", type=int, default=0, help="MiB/s")
    mk.add_argument("--dirty-size", type=int, default=64, help="MiB")
    mk.add_argument("--stopped", action="store_true")
    mk.add_argument("--storage", choices=["file", "lvm", "thinlvm"], default="file",
                    help="lvm/thinlvm: a (thin) logical volume on the LVM node")
    mk.add_argument("--ip", help="ADDR/PREFIX (default: a free address in guest-a)")
    mk.add_argument("--json", action="store_true")
    rm = sub.add_parser("rmserver", help="remove a server from every node")
    rm.add_argument("name")
    ls = sub.add_parser("servers")
    ls.add_argument("--json", action="store_true")
    gs = sub.add_parser("guest-status")
    gs.add_argument("ip")
    ov = sub.add_parser("override", help="bind-mount a file over os-release/cpuinfo in a node")
    ov.add_argument("node")
    ov.add_argument("what", choices=sorted(OVERRIDES))
    ov.add_argument("path", nargs="?")
    ov.add_argument("--clear", action="store_true")
    ln = sub.add_parser("link", help="link NODE down|up, link NODE rate MBIT|off")
    ln.add_argument("node")
    ln.add_argument("action", choices=["down", "up", "rate"])
    ln.add_argument("mbit", nargs="?")
    for cmd in ("block", "unblock"):
        b = sub.add_parser(cmd, help=f"{cmd} a TCP port inside a node")
        b.add_argument("node")
        b.add_argument("port")
    for cmd in ("restart-libvirtd", "kill-libvirtd", "start-libvirtd"):
        sub.add_parser(cmd).add_argument("node")
    return p


def _node_overrides(extra):
    """--nodeK-os-release PATH / --nodeK-cpuinfo PATH from the arguments argparse left."""
    out, i = {}, 0
    while i < len(extra):
        m = re.fullmatch(r"--node(\d+)-(os-release|cpuinfo)(?:=(.*))?", extra[i])
        if not m:
            raise LabError(f"unknown argument {extra[i]}")
        if m.group(3) is None:
            i += 1
            if i >= len(extra):
                raise LabError(f"{extra[i - 1]} needs a PATH")
        out[(int(m.group(1)), m.group(2))] = m.group(3) or extra[i]
        i += 1
    return out


def main(argv=None):
    args, extra = parser().parse_known_args(argv)
    try:
        if extra and args.cmd != "up":
            raise LabError(f"unknown arguments: {' '.join(extra)}")
        return run(args, extra) or 0
    except LabError as e:
        print(f"ferry-lab: {e}", file=sys.stderr)
        return 1


def run(args, extra):
    if args.cmd == "install-deps":
        deps.install_deps()
        return 0
    inst = Instance()
    if args.cmd == "up":
        t = time.time()
        vms = args.lvm_nodes if args.lvm_nodes is not None else int(args.lvm_node)
        lifecycle.up(inst, args.nodes, _node_overrides(extra), args.fixtures, vms)
        named = "".join(f" lvm{k}" for k in range(1, vms + 1))
        print(f"lab {inst.name} up: {args.nodes} nodes{' and' + named if vms else ''} "
              f"on 10.{inst.net}.0.0/24 ({time.time() - t:.1f}s)", file=sys.stderr)
    elif args.cmd == "down":
        lifecycle.down(inst, purge=args.purge)
    elif args.cmd == "status":
        st = lifecycle.status(inst)
        if args.json:
            _print_json(st)
        else:
            print(f"lab {st['name']} (net {st['net']}): {'up' if st['up'] else 'DOWN'}")
            for n in st["nodes"]:
                procs = " ".join(f"{k}={v}" for k, v in n["processes"].items())
                print(f"  {n['name']}  {n['address']}  {procs}")
    elif args.cmd == "ssh-config":
        print(lifecycle.ssh_config(inst), end="")
    elif args.cmd == "exec":
        node = _node(inst, args.node, vm_ok=True)
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not argv:
            raise LabError("exec NODE CMD...")
        if isinstance(node, LvmNode):
            node.ssh_master()
            full = node.ssh_argv(argv)
        else:
            full = node.enter() + argv
        return subprocess.run(full, env=CLEAN_ENV, cwd="/").returncode
    elif args.cmd == "mkserver":
        srv = servers.mkserver(inst, args.node, args.name, args.memory, args.disk, args.format,
                               args.dirty_rate, args.dirty_size, args.stopped, args.ip,
                               args.storage, args.fill)
        if args.json:
            _print_json(srv)
        else:
            print(f"{srv['name']} on {srv['node']}: {srv['ip']} ({srv['disk']['path']})")
    elif args.cmd == "rmserver":
        servers.rmserver(inst, args.name)
    elif args.cmd == "servers":
        rows = servers.servers(inst)
        if args.json:
            _print_json(rows)
        else:
            for r in rows:
                print(f"{r['node']}\t{r['state']}\t{r['name']}")
    elif args.cmd == "guest-status":
        _print_json(servers.guest_status(args.ip))
    elif args.cmd == "override":
        if bool(args.path) == bool(args.clear):
            raise LabError("override NODE WHAT PATH, or override NODE WHAT --clear")
        lifecycle.set_override(inst, _node(inst, args.node), args.what,
                               None if args.clear else args.path)
    elif args.cmd == "link":
        node = _node(inst, args.node)
        if args.action == "rate":
            if not args.mbit:
                raise LabError("link NODE rate MBIT|off")
            net.rate(node, args.mbit)
        else:
            net.link(node, args.action)
    elif args.cmd in ("block", "unblock"):
        getattr(net, args.cmd)(_node(inst, args.node), args.port)
    elif args.cmd == "kill-libvirtd":
        _node(inst, args.node).stop_libvirtd("KILL")
    elif args.cmd == "restart-libvirtd":
        node = _node(inst, args.node)
        node.stop_libvirtd("TERM")
        node.start_libvirtd()
    elif args.cmd == "start-libvirtd":
        node = _node(inst, args.node)
        if not node.daemon_pid("libvirtd"):
            node.start_libvirtd()
    return 0

"""A fake cluster for the engine's fast branch tests (after nova's fakelibvirt).

`FakeCluster` holds, per node, the domains libvirt would report and the files
its filesystem holds. `FakeHost` is the engine's door (app.infra.host.Host)
onto one node of it; `FakeShell` answers the commands the runners send over
SSH by doing to the fake files what the real tools would do. Faults are
injected by name: `cluster.fail("destination", "qemu-img compare")` makes the
next such command fail, `cluster.unknown("source", "undefine")` makes a
libvirt call raise HostUnknown (the node did not answer) after or before acting.

The lab proves the real thing; these prove every branch in milliseconds.
"""
from __future__ import annotations

import base64
import contextlib
import json
import posixpath
import shlex
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from app.infra.host import DomainAbsent, HostRefused, HostUnknown
from app.infra.migration import COMPLETED_JOB, DomainPlace


@dataclass
class FakeDomain:
    """A domain as one node's libvirt holds it."""

    xml: str
    running: bool = False
    persistent: bool = True
    paused: bool = False
    job: dict | None = None  # an active job's stats
    completed: dict | None = None  # the last completed job's stats


@dataclass
class FakeNode:
    """One node: its domains by UUID, its files by path, its running helper processes."""

    name: str
    address: str
    domains: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    pids: dict = field(default_factory=dict)  # pid file -> command name
    # logical volumes "vg/name" -> {"segtype", "pool", "size"}; the data is files["/dev/vg/name"]
    volumes: dict = field(default_factory=dict)
    sizes: dict = field(default_factory=dict)  # path -> virtual size in bytes (absent: 1 GiB)
    # device -> (start, end): bytes of a thick volume that still hold what its extents held
    # before (lvcreate zeroes none of them; the copy writes only up to the disk's size)
    stale: dict = field(default_factory=dict)

    def add_volume(self, vg, name, data=b"", segtype="linear", pool="", size=1 << 30):
        """A logical volume holding `data` (its device path in files)."""
        self.volumes[f"{vg}/{name}"] = {"segtype": segtype, "pool": pool, "size": size}
        self.files[f"/dev/{vg}/{name}"] = data
        self.sizes[f"/dev/{vg}/{name}"] = size

    def size(self, path) -> int:
        """The virtual size of an image or the size of a device."""
        return self.sizes.get(path, 1 << 30)


class FakeCluster:
    """Nodes by resource name, faults by (node, what)."""

    def __init__(self, *nodes):
        self.nodes = {n.name: n for n in nodes}
        self.faults: dict = {}  # (node, what) -> ("fail"|"unknown-before"|"unknown-after", count)
        self.commands: list = []  # (node, argv) in order
        self.hooks: dict = {}  # (node, what) -> callable run before the command acts
        self.migration_plan: dict = {}  # how the next live migration goes

    def node(self, name) -> FakeNode:
        return self.nodes[name]

    def fail(self, node, what, how="fail", times=1):
        """The next `times` calls or commands on `node` containing `what` fail that way."""
        self.faults[(node, what)] = (how, times)

    def _fault(self, node, text):
        for (where, what), (how, times) in list(self.faults.items()):
            if where == node and what in text and times > 0:
                self.faults[(where, what)] = (how, times - 1)
                return how
        return None

    def on(self, node, what, hook, after=False):
        """Run hook() just before a command or call containing `what` acts on `node` (with
        `after`, a command: just after it acted, before its caller hears of it)."""
        self.hooks[(node, what, after)] = hook

    def _hook(self, node, text, after=False):
        for (where, what, when), hook in list(self.hooks.items()):
            if where == node and what in text and when == after:
                del self.hooks[(where, what, when)]
                hook()

    def where(self, uuid) -> list[str]:
        """The nodes that define the domain."""
        return [n.name for n in self.nodes.values() if uuid in n.domains]

    def running_on(self, uuid) -> list[str]:
        return [n.name for n in self.nodes.values()
                if uuid in n.domains and n.domains[uuid].running]


def domain_xml(uuid, name, disks, nvram=None, tpm=False):
    """A minimal domain XML with file disks [(target, path, fmt)] (or (target, path, fmt, type),
    or (target, path, fmt, type, size): a storage slice of that size, offset 0)."""
    parts = [f"<domain type='qemu'><name>{name}</name><uuid>{uuid}</uuid><memory unit='KiB'>262144"
             "</memory><os><type>hvm</type>"]
    if nvram:
        parts.append(f"<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>"
                     f"<nvram>{nvram}</nvram>")
    parts.append("</os><devices>")
    for disk in disks:
        target, path, fmt = disk[:3]
        kind = disk[3] if len(disk) > 3 else "file"
        attr = "file" if kind == "file" else "dev"
        sliced = (f"<slices><slice type='storage' offset='0' size='{disk[4]}'/></slices>"
                  if len(disk) > 4 else "")
        parts.append(f"<disk type='{kind}' device='disk'><driver name='qemu' type='{fmt}'/>"
                     f"<source {attr}='{path}'>{sliced}</source><target dev='{target}' "
                     "bus='virtio'/></disk>")
    if tpm:
        parts.append("<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>")
    parts.append("</devices></domain>")
    return "".join(parts)


class FakeHost:
    """The engine's door onto one fake node (same methods as app.infra.host.Host)."""

    def __init__(self, cluster: FakeCluster, node: str):
        self.cluster, self.node_name = cluster, node
        self.name = node

    @property
    def node(self) -> FakeNode:
        return self.cluster.node(self.node_name)

    def close(self):
        pass

    def _act(self, what, func):
        how = self.cluster._fault(self.node_name, what)
        self.cluster._hook(self.node_name, what)
        if how == "fail":
            raise HostRefused(f"{self.node_name}: {what} refused")
        if how == "unknown-before":
            raise HostUnknown(f"{self.node_name}: {what}: no answer")
        result = func()
        if how == "unknown-after":
            raise HostUnknown(f"{self.node_name}: {what}: reply lost")
        return result

    def _dom(self, uuid) -> FakeDomain:
        if self.cluster._fault(self.node_name, "down"):
            raise HostUnknown(f"{self.node_name}: down")
        dom = self.node.domains.get(uuid)
        if dom is None:
            raise DomainAbsent(f"{self.node_name}: no domain {uuid}")
        return dom

    def place(self, uuid) -> DomainPlace:
        if self.cluster._fault(self.node_name, "place"):
            return DomainPlace(defined=False, running=False, error=f"{self.node_name}: no answer")
        dom = self.node.domains.get(uuid)
        if dom is None:
            return DomainPlace(defined=False, running=False)
        return DomainPlace(defined=True, running=dom.running and not dom.paused, paused=dom.paused,
                           job_active=dom.job is not None, persistent=dom.persistent)

    def xml(self, uuid, inactive=False, migratable=False):
        return self._dom(uuid).xml

    def define(self, xml):
        uuid = ET.fromstring(xml).findtext("uuid")

        def act():
            dom = self.node.domains.get(uuid)
            if dom is None:
                self.node.domains[uuid] = FakeDomain(xml=xml)
            else:
                dom.xml, dom.persistent = xml, True
        self._act("define", act)

    def undefine(self, uuid):
        dom = self._dom(uuid)

        def act():
            if dom.running:
                dom.persistent = False
            else:
                del self.node.domains[uuid]
        self._act("undefine", act)

    def destroy(self, uuid):
        dom = self._dom(uuid)

        def act():
            dom.running = dom.paused = False
            if not dom.persistent:
                del self.node.domains[uuid]
        self._act("destroy", act)

    def suspend(self, uuid):
        dom = self._dom(uuid)
        self._act("suspend", lambda: setattr(dom, "paused", True))

    def resume(self, uuid):
        dom = self._dom(uuid)
        self._act("resume", lambda: setattr(dom, "paused", False))

    def job_stats(self, uuid, completed=False):
        dom = self.node.domains.get(uuid)
        if dom is None:
            return {}
        if completed:
            return dict(dom.completed or {})
        step = self.cluster.migration_plan.get("adopt_steps")
        if dom.job is not None and step is not None:
            # An adopted job ends after a few polls, the way migration_plan says.
            self.cluster.migration_plan["adopt_steps"] = step - 1
            if step <= 0:
                finish_migration(self.cluster, self.node_name, uuid,
                                 self.cluster.migration_plan.get("adopt_outcome", "done"))
                return {}
        return dict(dom.job or {})

    def abort_job(self, uuid):
        dom = self._dom(uuid)

        def act():
            if dom.job is not None:
                finish_migration(self.cluster, self.node_name, uuid, "aborted")
        self._act("abort", act)

    def set_max_downtime(self, uuid, ms):
        self._dom(uuid)

    def start_postcopy(self, uuid):
        raise HostRefused("post-copy was not allowed at start")

    def compare_cpu(self, cpu_xml):
        return 1

    def migration(self, uuid, dest_uri, params, flags, control):
        self.cluster.migration_flags, self.cluster.migration_uri = flags, dest_uri
        return FakeMigration(self.cluster, self.node_name, uuid, params)


def finish_migration(cluster, source, uuid, outcome):
    """End a migration the way `outcome` says: done, failed or aborted, left-paused (failed,
    with a paused transient copy on the destination), both-running, stale-source."""
    src = cluster.node(source)
    dom = src.domains[uuid]
    dom.job = None
    plan = cluster.migration_plan
    dst = cluster.node(plan["destination"])
    if outcome == "aborted" or outcome == "failed":
        dst.domains.pop(uuid, None)
        return
    if outcome == "left-paused":  # failed; the destination's restarted libvirtd kept its half
        dst.domains[uuid] = FakeDomain(xml=dom.xml, running=True, paused=True, persistent=False)
        dom.paused = bool(plan.get("pause_source"))
        return
    for path, content in plan.get("copies", {}).items():
        dst.files[path] = src.files.get(content, b"")
    xml = plan.get("dest_xml") or dom.xml
    dst.domains[uuid] = FakeDomain(xml=xml, running=True, persistent=True,
                                   completed={"type": COMPLETED_JOB, "downtime": 42,
                                              "time_elapsed": 1000, "data_processed": 1})
    if outcome == "both-running":
        dst.domains[uuid].completed = None  # the destination recorded no switch-over
        return
    if outcome == "stale-source":
        dom.running = False  # the source's libvirtd died before Confirm: a shut-off definition
        return
    del src.domains[uuid]


class FakeMigration:
    """A migrateToURI3 call on the fake cluster; it ends at start, as the plan says."""

    def __init__(self, cluster, source, uuid, params):
        self.cluster, self.source, self.uuid, self.params = cluster, source, uuid, params
        self.error = None
        self.error_code = None
        self.done = False
        # jobStats the monitor loop reads, one a poll, before the call returns (plan "samples")
        self.samples = list(cluster.migration_plan.get("samples", ()))

    def start(self):
        plan = self.cluster.migration_plan
        outcome = plan.get("outcome", "done")
        self.cluster.migration_started_at = len(self.cluster.commands)  # commands sent before
        dom = self.cluster.node(self.source).domains[self.uuid]
        if outcome == "die":  # the worker dies mid-migration: libvirt goes on without it
            dom.job = {"type": 2, "data_total": 100, "data_processed": 50, "data_remaining": 50,
                       "memory_total": 100, "memory_processed": 50, "memory_remaining": 50,
                       "time_elapsed": 1000}
            raise SystemExit("the worker died")
        dom.job = {"type": 2}
        finish_migration(self.cluster, self.source, self.uuid, outcome)
        if outcome in ("failed", "aborted", "left-paused"):
            self.error = plan.get("error", "internal error: migration failed")
        self.done = not self.samples

    def wait(self, timeout=None):
        pass

    def stats(self):
        if not self.samples:
            return {}
        sample = self.samples.pop(0)
        self.done = not self.samples
        return sample

    def set_max_downtime(self, ms):
        pass

    def start_postcopy(self):
        pass

    def abort(self):
        pass


@dataclass
class _Result:
    exited: int
    stdout: str = ""
    stderr: str = ""


class FakeShell:
    """An SSH connection to a fake node that carries out the runners' commands on its files."""

    def __init__(self, cluster: FakeCluster, node: str):
        self.cluster, self.node_name, self.host = cluster, node, node

    @property
    def node(self) -> FakeNode:
        return self.cluster.node(self.node_name)

    def close(self):
        pass

    def run(self, line, hide=True, warn=True, timeout=None, in_stream=False):
        argv = shlex.split(line)
        self.cluster.commands.append((self.node_name, argv))
        text = " ".join(argv)
        self.cluster._hook(self.node_name, text)
        how = self.cluster._fault(self.node_name, text)
        if how == "fail":
            return _Result(1, "", f"injected failure of {argv[0]}")
        if how == "in-use":
            return _Result(1, "", "Failed to find an available port: Address already in use")
        if how:
            raise OSError(f"{self.node_name}: connection lost")
        stdin = in_stream.read() if in_stream else None
        result = self._do(argv, stdin)
        self.cluster._hook(self.node_name, text, after=True)
        return result

    def _lvm(self, argv):
        return _lvm_do(self.node, argv)

    def _export_read(self, argv, spec):
        """The export a qemu-img reader names (nbd:// URL or --image-opts), or None when the
        export speaks TLS and the reader does not (qemu-nbd refuses it)."""
        if spec.startswith("driver=nbd,"):
            options = dict(o.split("=", 1) for o in spec.split(","))
            export, tls = options["export"], "tls-creds" in options
        else:
            export, tls = spec.rsplit("/", 1)[1], False
        if export in getattr(self.cluster, "tls_exports", set()) and not tls:
            return None
        return export

    def _do(self, argv, stdin):
        files, pids = self.node.files, self.node.pids
        if argv[:2] == ["test", "-e"]:
            return _Result(0 if argv[2] in files else 1)
        if argv[0] == "qemu-nbd":
            pid = next(a.split("=", 1)[1] for a in argv if a.startswith("--pid-file="))
            export = argv[argv.index("--export-name") + 1]
            pids[pid] = "qemu-nbd"
            self.node.files[pid] = "1"
            self.cluster.exports = getattr(self.cluster, "exports", {})
            path, size = argv[-1], None
            if "--image-opts" in argv:  # raw of a given size over the device: a sliced disk
                path, size = _opts_path(path), int(_opts(path)["size"])
            self.cluster.exports[export] = (self.node_name, path, size or self.node.size(path))
            self.cluster.tls_exports = getattr(self.cluster, "tls_exports", set())
            if "--tls-creds" in argv:
                self.cluster.tls_exports.add(export)
            return _Result(0)
        if argv[0] == "sh":
            tag = argv[3]
            if tag == "ferry-stop":
                pid = argv[4]
                pids.pop(pid, None)
                files.pop(pid, None)
                return _Result(0)
            if tag == "ferry-run":
                pids[argv[4]] = argv[5]
                files[argv[4]] = "1"
                return self._do(argv[5:], stdin)
            if tag == "ferry-renamed":  # the final name is the temporary one's
                tmp, final = argv[4], argv[5]
                return _Result(0, "ours" if final in files and tmp not in files else "not ours")
            if tag == "ferry-rename":
                tmp, final = argv[4], argv[5]
                if final in files:
                    return _Result(17, "", f"refusing to overwrite {final}")
                files[final] = files.pop(tmp)
                if tmp in self.node.sizes:
                    self.node.sizes[final] = self.node.sizes.pop(tmp)
                return _Result(0)
            if tag == "ferry-create":
                path = argv[4]
                if path in files:
                    return _Result(17, "", f"refusing to overwrite {path}")
                files[path] = b""
                return _Result(0)
            if tag == "ferry-write":
                if argv[4] in files:
                    return _Result(1, "", "cannot overwrite existing file")
                files[argv[4]] = base64.b64decode(stdin)
                return _Result(0)
            if tag == "ferry-tar":
                path = posixpath.join(argv[4], argv[5])
                tree = {p: v.decode("latin-1") if isinstance(v, bytes) else v
                        for p, v in files.items() if p.startswith(path + "/")}
                return _Result(0, base64.b64encode(json.dumps(tree).encode()).decode())
            if tag == "ferry-p2p":  # the destination's pinned host key and the ssh wrapper
                directory, name = argv[4], argv[5]
                files[f"{directory}/{name}.known_hosts"] = argv[6] + "\n"
                files[f"{directory}/{name}.ssh"] = stdin
                return _Result(0)
            if tag == "ferry-untar":
                path = posixpath.join(argv[4], argv[5])
                if any(p.startswith(path + "/") for p in files):
                    return _Result(17, "", "exists")
                for p, v in json.loads(base64.b64decode(stdin)).items():
                    files[p] = v.encode("latin-1")
                return _Result(0)
        if argv[0].startswith("lv"):
            return self._lvm(argv)
        if argv[:2] == ["qemu-img", "convert"]:
            return self._convert(argv)
        if argv[:2] == ["qemu-img", "compare"]:
            return self._compare(argv)
        if argv[:2] == ["qemu-img", "info"]:
            return _Result(0, json.dumps({"virtual-size": self.node.size(argv[-1])}))
        if argv[:2] == ["blockdev", "--getsize64"]:
            if argv[-1] not in files:
                return _Result(1, "", f"blockdev: cannot open {argv[-1]}")
            return _Result(0, f"{self.node.size(argv[-1])}\n")
        if argv[0] == "dd":
            return self._zero(dict(a.split("=", 1) for a in argv[1:]))
        if argv[:2] == ["rm", "-f"]:
            files.pop(argv[-1], None)
            return _Result(0)
        if argv[:2] == ["rm", "-rf"]:
            for p in [p for p in files if p == argv[-1] or p.startswith(argv[-1] + "/")]:
                del files[p]
            return _Result(0)
        if argv[:2] == ["base64", "-w0"]:
            if argv[-1] not in files:
                return _Result(1, "", "No such file")
            data = files[argv[-1]]
            return _Result(0, base64.b64encode(data if isinstance(data, bytes) else data.encode()).decode())
        raise AssertionError(f"the fake shell does not know {argv}")


    def _convert(self, argv):
        """qemu-img convert from an export: a new file of the export's size, or (-n) into an
        existing volume at least that large, whose bytes past it stay as they were."""
        url, dst = argv[-2], argv[-1]
        files = self.node.files
        if "-n" in argv and dst not in files:
            return _Result(1, "", f"qemu-img: Could not open '{dst}': No such file")
        export = self._export_read(argv, url)
        if export is None:
            return _Result(1, "", "TLS negotiation required before option NBD_OPT_GO")
        node, path, size = self.cluster.exports[export]
        if "-n" in argv and self.node.size(dst) < size:
            return _Result(1, "", "qemu-img: Error: Target image size too small")
        files[dst] = self.cluster.node(node).files[path]
        if "-n" not in argv:
            self.node.sizes[dst] = size
        return _Result(0, "    (100.00/100%)\n")

    def _compare(self, argv):
        """qemu-img compare of an export with a local image: the same data, and where one is
        larger, its extra must read as zeros (a thick volume's stale tail does not)."""
        url, path = argv[-2], argv[-1]
        export = self._export_read(argv, url)
        if export is None:
            return _Result(2, "", "TLS negotiation required before option NBD_OPT_GO")
        if path.startswith("driver="):  # --image-opts: the local image as options too
            path = _opts_path(path)
        node, src, size = self.cluster.exports[export]
        same = self.cluster.node(node).files.get(src) == self.node.files.get(path)
        local = self.node.size(path)
        if local < size or (local > size and self.node.stale.get(path, (local,))[0] < local):
            same = False
        return _Result(0 if same else 1, "" if same else "Content mismatch")

    def _zero(self, ops):
        """dd of zeros over [seek, seek + count) bytes of a device: it clears a stale tail it
        covers, overwrites the disk's data if it starts inside it, fails past the end."""
        path, seek, count = ops["of"], int(ops["seek"]), int(ops["count"])
        assert ops.get("oflag") == "seek_bytes" and ops.get("iflag") == "count_bytes", ops
        if seek + count > self.node.size(path):
            return _Result(1, "", f"dd: error writing '{path}': No space left on device")
        start, end = self.node.stale.get(path, (seek, seek + count))
        if seek < start:
            self.node.files[path] = b"zeroed-over-the-data"
        if seek <= start and seek + count >= end:
            self.node.stale.pop(path, None)
        return _Result(0)


def _opts(spec):
    """QEMU's key=value,... options (",," is a comma inside a value)."""
    parts = spec.replace(",,", "\0").split(",")
    return dict(p.replace("\0", ",").split("=", 1) for p in parts)


def _opts_path(spec):
    return _opts(spec)["file.filename"]


EXTENT = 4 << 20  # lvm's default physical extent: a volume's size is rounded up to it


def _lvm_do(node, argv):
    """What lvs, lvcreate, lvrename and lvremove do to a fake node's volumes."""
    volumes, files = node.volumes, node.files
    if argv[0] == "lvs":
        rows = [{"vg_name": key.split("/")[0], "lv_name": key.split("/")[1],
                 "lv_path": f"/dev/{key}", "lv_dm_path": "", "segtype": v["segtype"],
                 "pool_lv": v["pool"], "lv_size": str(v["size"]),
                 "data_percent": "1.00" if v["segtype"] == "thin" else "",
                 "metadata_percent": ""} for key, v in volumes.items()]
        return _Result(0, json.dumps({"report": [{"lv": rows}]}))
    if argv[0] == "lvcreate":
        name = argv[argv.index("-n") + 1]
        if "-T" in argv:
            vg, pool = argv[argv.index("-T") + 1].split("/")
            size, segtype = argv[argv.index("-V") + 1], "thin"
        else:
            vg, pool, size, segtype = argv[-1], "", argv[argv.index("-L") + 1], "linear"
        if f"{vg}/{name}" in volumes:
            return _Result(5, "", f'Logical Volume "{name}" already exists in volume group "{vg}"')
        asked = int(size.rstrip("b"))
        rounded = -(-asked // EXTENT) * EXTENT
        node.add_volume(vg, name, b"", segtype, pool, rounded)
        if segtype == "linear" and rounded > asked:
            node.stale[f"/dev/{vg}/{name}"] = (asked, rounded)
        return _Result(0, f'Logical volume "{name}" created.')
    if argv[0] == "lvrename":
        vg, old, new = argv[1:4]
        if f"{vg}/{new}" in volumes or f"{vg}/{old}" not in volumes:
            return _Result(5, "", f'Logical Volume "{new}" already exists in volume group "{vg}"')
        volumes[f"{vg}/{new}"] = volumes.pop(f"{vg}/{old}")
        for held in (files, node.sizes, node.stale):
            if f"/dev/{vg}/{old}" in held:
                held[f"/dev/{vg}/{new}"] = held.pop(f"/dev/{vg}/{old}")
        return _Result(0)
    if argv[0] == "lvremove":
        key = argv[-1]
        if key not in volumes:
            return _Result(5, "", f'Failed to find logical volume "{key}"')
        del volumes[key]
        for held in (files, node.sizes, node.stale):
            held.pop(f"/dev/{key}", None)
        return _Result(0)
    raise AssertionError(f"the fake shell does not know {argv}")


class FakeNodes:
    """What the runners open per compute resource: FakeHost and FakeShell by resource name."""

    def __init__(self, cluster):
        self.cluster = cluster

    @contextlib.contextmanager
    def host(self, resource):
        if self.cluster._fault(resource.name, "connect"):
            from app.errors import FerryError
            raise FerryError(f"{resource.name}: cannot connect")
        yield FakeHost(self.cluster, resource.name)

    @contextlib.contextmanager
    def shell(self, resource):
        yield FakeShell(self.cluster, resource.name)

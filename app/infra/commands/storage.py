"""Disk copy, conversion and data-path probe commands sent to compute nodes.

Every function returns an argument list; `to_shell` quotes one for SSH.
Names that reach a command (paths, export names, volume names, addresses)
are either passed as single arguments or validated against a strict pattern
where the tool would parse them (socat addresses, NBD URLs, LVM names), so a
server called `db;touch x` stays a file name and never becomes shell or
option text.

Offline copy design: the source node serves the disk read-only with
`qemu-nbd --format SRC_FMT` (the *decoded* guest view, with allocation
status), bound to the source's address on TCP 8081; the destination runs
`qemu-img convert -f raw nbd://SRC:8081/EXPORT` into the target format in
one pass. Holes are skipped on both sides, no temporary full copy exists,
and no nbd kernel module is needed. qemu-nbd forks once it listens and
writes a pid file, so it is stopped by PID, never by name. With TLS (the
default where both nodes hold Ferry's certificates) the export and its reader
authenticate each other with x509 certificates from Ferry's CA, the export
name carries a random token and the export takes one client at a time.
"""

from __future__ import annotations

import ipaddress
import json
import posixpath
import re
import secrets
import shlex
from typing import Iterable, Optional, Sequence

NBD_PORT = 8081
PROBE_PORT = 8082  # throughput probe listener on the destination
FORMATS = ("raw", "qcow2")

_EXPORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TLS_ID = "tls0"
# lvm(8): names of [a-zA-Z0-9+_.-], not starting with '-'
_LVM_NAME = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")
_PROGRESS = re.compile(r"\(([0-9]{1,3}(?:\.[0-9]{1,6})?)/100%\)")
_DD_SUMMARY = re.compile(r"^([0-9]{1,20}) bytes .* copied, ([0-9]{1,12}(?:[.,][0-9]{1,12})?) s", re.MULTILINE)
_MAX_IMAGE = 1 << 60  # an exbibyte: anything larger is not a real disk


class RefusedCommand(ValueError):
    """A command Ferry will not build: the argument is unsafe or out of bounds."""


# ---------------------------------------------------------------- helpers

def to_shell(argv: Sequence[str]) -> str:
    """Join an argument list into one shell line, every argument quoted.

    >>> to_shell(["qemu-img", "info", "/var/lib/libvirt/images/db;touch x"])
    "qemu-img info '/var/lib/libvirt/images/db;touch x'"
    """
    return " ".join(shlex.quote(str(a)) for a in argv)


def _path(path: str) -> str:
    """Return an absolute, normalised path or refuse it.

    Absolute paths also keep qemu from reading "proto:" prefixes as protocols.
    """
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise RefusedCommand(f"not an absolute path: {path!r}")
    if posixpath.normpath(path) != path or path.endswith("/"):
        raise RefusedCommand(f"path is not normalised (.., // or trailing /): {path!r}")
    return path


def _address(address: str) -> str:
    """Return an IP address or host name, refusing anything else."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        if isinstance(address, str) and _HOSTNAME.match(address):
            return address
    raise RefusedCommand(f"not an IP address or host name: {address!r}")


def _host_port(address: str, port: int) -> str:
    """Return ADDR:PORT with IPv6 brackets, for URLs and socat addresses."""
    address = _address(address)
    port = _port(port)
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _port(port: int) -> int:
    """Return a valid TCP port number."""
    if not isinstance(port, int) or not 0 < port < 65536:
        raise RefusedCommand(f"not a TCP port: {port!r}")
    return port


def _format(fmt: str) -> str:
    """Return a supported image format."""
    if fmt not in FORMATS:
        raise RefusedCommand(f"unsupported image format: {fmt!r}")
    return fmt


def _size(size: int) -> int:
    """Return a positive byte count."""
    if not isinstance(size, int) or size <= 0:
        raise RefusedCommand(f"not a size in bytes: {size!r}")
    return size


def _export(name: str) -> str:
    """Return a safe NBD export name (it travels inside a URL)."""
    if not isinstance(name, str) or not _EXPORT_NAME.match(name):
        raise RefusedCommand(f"unsafe NBD export name: {name!r}")
    return name


def _lvm(name: str) -> str:
    """Return a valid LVM name (lvm refuses others anyway; refuse them first)."""
    if not isinstance(name, str) or not _LVM_NAME.match(name) or name in (".", ".."):
        raise RefusedCommand(f"not a valid LVM name: {name!r}")
    return name


def export_name(task_id: int, disk_index: int, token: str) -> str:
    """Return the NBD export name of a task's disk; `token` is random (see `export_token`),
    so a client that knows the task id cannot guess it.

    >>> export_name(12, 0, "k3Xq9")
    'ferry-12-0-k3Xq9'
    """
    return _export(f"ferry-{int(task_id)}-{int(disk_index)}-{token}")


def export_token() -> str:
    """Return a fresh random token for export names (96 bits, URL-safe)."""
    return secrets.token_urlsafe(12)


def temp_path(final_path: str, task_id: int) -> str:
    """Return the temporary name a disk is written to before its rename.

    >>> temp_path("/var/lib/libvirt/images/web.qcow2", 7)
    '/var/lib/libvirt/images/.web.qcow2.ferry-7.part'
    """
    head, tail = posixpath.split(_path(final_path))
    return posixpath.join(head, f".{tail}.ferry-{int(task_id)}.part")


def nbd_url(address: str, name: str, port: int = NBD_PORT) -> str:
    """Return the nbd:// URL of an export.

    >>> nbd_url("10.0.0.1", "ferry-1-0"), nbd_url("fd00::1", "ferry-1-0")
    ('nbd://10.0.0.1:8081/ferry-1-0', 'nbd://[fd00::1]:8081/ferry-1-0')
    """
    return f"nbd://{_host_port(address, port)}/{_export(name)}"


def lv_path(vg: str, name: str) -> str:
    """Return /dev/VG/NAME for a logical volume."""
    return f"/dev/{_lvm(vg)}/{_lvm(name)}"


def lv_name_for(path: str, fallback: str = "disk") -> str:
    """The logical volume name a file disk gets on LVM: its file name without the image
    suffix, any character lvm refuses turned into "_".

    >>> lv_name_for("/var/lib/libvirt/images/web.qcow2"), lv_name_for("/img/db;x y.raw")
    ('web', 'db_x_y')
    >>> lv_name_for("/img/-.img", "vda")
    'vda'
    """
    base = posixpath.basename(_path(path))
    root, ext = posixpath.splitext(base)
    if ext in (".raw", ".qcow2", ".img"):
        base = root
    name = re.sub(r"[^A-Za-z0-9+_.-]", "_", base).lstrip("-.")[:100]
    return _lvm(name) if name and _LVM_NAME.match(name) else _lvm(fallback)


def temp_lv_name(final_name: str, task_id: int, token: str) -> str:
    """The temporary name a task's new logical volume is created under before its rename:
    the task id and its random token make it the task's own.

    >>> temp_lv_name("web", 7, "k3Xq9")
    'web.ferry-7.k3Xq9.part'
    """
    return _lvm(f"{_lvm(final_name)[:80]}.ferry-{int(task_id)}.{token}.part")


def split_lv_path(path: str) -> tuple[str, str]:
    """(VG, LV) of a /dev/VG/LV path; RefusedCommand for anything else.

    >>> split_lv_path("/dev/ferry/web")
    ('ferry', 'web')
    """
    parts = _path(path).split("/")
    if len(parts) != 4 or parts[1] != "dev":
        raise RefusedCommand(f"not a /dev/VG/LV path: {path!r}")
    return _lvm(parts[2]), _lvm(parts[3])


# ---------------------------------------------------------------- NBD export

def nbd_export(path: str, fmt: str, bind_address: str, name: str, pid_file: str,
               port: int = NBD_PORT, tls_dir: str | None = None,
               size: int | None = None, block: bool = False) -> list[str]:
    """Export a (stopped) server's disk read-only over TCP, as its decoded guest view.

    --fork returns once the server listens (no race with the reader);
    --persistent keeps it up for the verify pass after the copy; --shared=1:
    one client at a time (the copy, then the compare, never both at once), so
    nobody can read the disk beside Ferry's own reader. With tls_dir (a
    directory of ca-cert.pem, server-cert.pem, server-key.pem) the export
    speaks only TLS and only to a client whose certificate Ferry's CA signed.
    With `size` (a raw disk its definition slices to that size, see `sliced`) only
    the guest's first size bytes are exported, not the volume's rounded-up tail;
    `block`: the path is a block device (QEMU's host_device protocol).

    >>> nbd_export("/img/web.qcow2", "qcow2", "10.0.0.1", "ferry-1-0", "/run/f.pid")[:6]
    ['qemu-nbd', '--read-only', '--persistent', '--shared=1', '--fork', '--pid-file=/run/f.pid']
    >>> nbd_export("/img/w", "raw", "10.0.0.1", "ferry-1-0", "/run/f.pid", tls_dir="/etc/ferry/pki/nbd")[6:10]
    ['--object', 'tls-creds-x509,id=tls0,endpoint=server,dir=/etc/ferry/pki/nbd,verify-peer=on', '--tls-creds', 'tls0']
    >>> nbd_export("/dev/vg/w", "raw", "10.0.0.1", "e", "/run/f.pid", size=1049088, block=True)[-4:]
    ['e', '--image-opts', '--', 'driver=raw,size=1049088,file.driver=host_device,file.filename=/dev/vg/w']
    """
    tls = []
    if tls_dir is not None:
        tls = ["--object", f"tls-creds-x509,id={TLS_ID},endpoint=server,dir={_opt_path(tls_dir)},"
                           "verify-peer=on", "--tls-creds", TLS_ID]
    image = ["--format", _format(fmt)], ["--", _path(path)]
    if size is not None:
        if _format(fmt) != "raw":
            raise RefusedCommand("only a raw disk is exported cut to its size")
        protocol = "host_device" if block else "file"
        image = [], ["--image-opts", "--", f"driver=raw,size={_size(size)},file.driver="
                                           f"{protocol},file.filename={_opt_path(path)}"]
    return [
        "qemu-nbd", "--read-only", "--persistent", "--shared=1", "--fork",
        f"--pid-file={_path(pid_file)}", *tls,
        "--bind", _address(bind_address), "--port", str(_port(port)),
        *image[0], "--export-name", _export(name), *image[1],
    ]


def _opt_path(path: str) -> str:
    """Return a path as a value inside a QEMU option string: a comma is doubled (QEMU's
    escape), else it would start the next option.

    >>> _opt_path("/img/a,b")
    '/img/a,,b'
    """
    return _path(path).replace(",", ",,")


def nbd_source(address: str, name: str, port: int = NBD_PORT,
               tls_dir: str | None = None) -> tuple[list[str], str]:
    """Return (options, image) for a qemu-img command reading an export as raw.

    Plain: (["-f", "raw"], nbd://...). With tls_dir (ca-cert.pem, client-cert.pem,
    client-key.pem) the client proves itself with Ferry's certificate and checks
    the server's against the address: the image becomes an --image-opts string.

    >>> nbd_source("10.0.0.1", "ferry-1-0")
    (['-f', 'raw'], 'nbd://10.0.0.1:8081/ferry-1-0')
    >>> nbd_source("10.0.0.1", "ferry-1-0", tls_dir="/p")
    (['--object', 'tls-creds-x509,id=tls0,endpoint=client,dir=/p', '--image-opts'], 'driver=nbd,host=10.0.0.1,port=8081,export=ferry-1-0,tls-creds=tls0')
    """
    if tls_dir is None:
        return ["-f", "raw"], nbd_url(address, name, port)
    return (["--object", f"tls-creds-x509,id={TLS_ID},endpoint=client,dir={_opt_path(tls_dir)}",
             "--image-opts"],
            f"driver=nbd,host={_address(address)},port={_port(port)},export={_export(name)},"
            f"tls-creds={TLS_ID}")


def stop_by_pid_file(pid_file: str, expect: str | None = None) -> list[str]:
    """Stop the process whose PID is in pid_file (qemu-nbd, probes), then drop the file.

    With `expect` (a command name such as "qemu-nbd") the process is killed only
    if /proc still shows that command under the PID: a PID reused by another
    process after ours ended is never killed. The pid file is passed as a
    positional parameter, never pasted into the script.

    >>> stop_by_pid_file("/run/f.pid", "qemu-nbd")[-2:]
    ['/run/f.pid', 'qemu-nbd']
    """
    if expect is None:
        return ["sh", "-c",
                'pid=$(cat -- "$1") && kill "$pid" 2>/dev/null; rm -f -- "$1"',
                "ferry-stop", _path(pid_file)]
    if not re.fullmatch(r"[a-z0-9-]{1,15}", expect):
        raise RefusedCommand(f"refusing to match the process name {expect!r}")
    return ["sh", "-c",
            'pid=$(cat -- "$1" 2>/dev/null) || exit 0;'
            ' case "$pid" in *[!0-9]*|"") rm -f -- "$1"; exit 0;; esac;'
            ' if [ "$(cat /proc/$pid/comm 2>/dev/null)" = "$2" ]; then kill "$pid";'
            ' for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /proc/$pid ] || break; sleep 0.2; done; fi;'
            ' rm -f -- "$1"',
            "ferry-stop", _path(pid_file), expect]


# ---------------------------------------------------------------- copy and convert

def convert_from_nbd(address: str, name: str, dst_path: str, dst_fmt: str,
                     port: int = NBD_PORT, tls_dir: str | None = None,
                     existing: bool = False, target_is_zero: bool = False) -> list[str]:
    """Copy an exported disk into a new file of dst_fmt, keeping it sparse.

    The export is the decoded guest view, so the source is read as raw
    whatever its format on disk (see `nbd_source`, also for tls_dir). With
    `existing` the target is a logical volume Ferry created for the copy (raw,
    `-n`: qemu-img writes into it instead of creating a file); `target_is_zero`
    (a fresh thin volume, which reads as zeros) lets it skip the zeros, so the
    volume stays thin.

    >>> convert_from_nbd("10.0.0.1", "ferry-1-0", "/img/.w.part", "qcow2")
    ['qemu-img', 'convert', '-p', '-f', 'raw', '-O', 'qcow2', '-o', 'preallocation=off', 'nbd://10.0.0.1:8081/ferry-1-0', '/img/.w.part']
    >>> convert_from_nbd("10.0.0.1", "e", "/dev/vg/t", "raw", existing=True, target_is_zero=True)[3:10]
    ['-f', 'raw', '-n', '--target-is-zero', '-O', 'raw', '-S']
    """
    options, image = nbd_source(address, name, port, tls_dir)
    if target_is_zero and not existing:
        raise RefusedCommand("--target-is-zero applies only to an existing target (-n)")
    if existing and _format(dst_fmt) != "raw":
        raise RefusedCommand("Ferry writes only raw into an existing volume")
    into = ["-n", *(["--target-is-zero"] if target_is_zero else [])] if existing else []
    return ["qemu-img", "convert", "-p", *options, *into, "-O", _format(dst_fmt),
            *_sparse_options(dst_fmt), image, _path(dst_path)]


def _sparse_options(dst_fmt: str) -> list[str]:
    """Return the options that keep the target sparse in its format."""
    if _format(dst_fmt) == "qcow2":
        return ["-o", "preallocation=off"]
    return ["-S", "4k"]  # raw: leave runs of 4 KiB zeros as holes


def lvcreate(vg: str, name: str, size: int) -> list[str]:
    """Create a thick logical volume of size bytes (lvm rounds up to an extent).

    >>> lvcreate("vg0", "web-disk0", 1073741824)
    ['lvcreate', '--yes', '--wipesignatures', 'y', '-n', 'web-disk0', '-L', '1073741824b', 'vg0']
    """
    return ["lvcreate", "--yes", "--wipesignatures", "y", "-n", _lvm(name),
            "-L", f"{_size(size)}b", _lvm(vg)]


def lvcreate_thin(vg: str, pool: str, name: str, size: int) -> list[str]:
    """Create a thin volume of size bytes in the thin pool VG/POOL.

    >>> lvcreate_thin("vg0", "thin0", "web-disk0", 1073741824)
    ['lvcreate', '--yes', '-V', '1073741824b', '-T', 'vg0/thin0', '-n', 'web-disk0']
    """
    return ["lvcreate", "--yes", "-V", f"{_size(size)}b", "-T", f"{_lvm(vg)}/{_lvm(pool)}",
            "-n", _lvm(name)]


def device_size(path: str) -> list[str]:
    """Print a block device's size in bytes (a new volume's: lvm rounds it up to an extent).

    >>> device_size("/dev/vg0/web")
    ['blockdev', '--getsize64', '/dev/vg0/web']
    """
    return ["blockdev", "--getsize64", _path(path)]


def parse_device_size(text: str) -> int:
    """The byte count `device_size` printed; ValueError on anything else (a node's output).

    >>> parse_device_size("1077936128\\n")
    1077936128
    """
    value = (text or "").strip()
    if not re.fullmatch(r"[0-9]{1,19}", value) or not 0 < int(value) <= _MAX_IMAGE:
        raise ValueError(f"not a device size: {value[:40]!r}")
    return int(value)


def zero_range(path: str, offset: int, length: int) -> list[str]:
    """Write zeros over exactly [offset, offset + length) bytes of a device: a new thick
    volume's tail past the disk's size (lvcreate zeroes none of it, so it holds whatever its
    extents held before, and a compare would find that, a guest could read it).

    >>> zero_range("/dev/vg0/w.part", 1074790912, 3145216)[1:6]
    ['if=/dev/zero', 'of=/dev/vg0/w.part', 'bs=1M', 'seek=1074790912', 'count=3145216']
    """
    return ["dd", "if=/dev/zero", f"of={_path(path)}", "bs=1M", f"seek={_size(offset)}",
            f"count={_size(length)}", "oflag=seek_bytes", "iflag=count_bytes",
            "conv=notrunc,fsync", "status=none"]


def lvremove(vg: str, name: str) -> list[str]:
    """Remove a logical volume (cleanup of a failed copy, or the moved source)."""
    return ["lvremove", "--yes", f"{_lvm(vg)}/{_lvm(name)}"]


def lvrename(vg: str, old: str, new: str) -> list[str]:
    """Rename a logical volume from its temporary to its final name."""
    return ["lvrename", _lvm(vg), _lvm(old), _lvm(new)]


def compare(a: str, a_fmt: str, b: str, b_fmt: str) -> list[str]:
    """Compare two images' guest-visible contents (exit 0 same, 1 different, 2 error).

    Either side may be an nbd:// URL from `nbd_url` (read it as raw).
    """
    return ["qemu-img", "compare", "-f", _format(a_fmt), "-F", _format(b_fmt),
            _image(a), _image(b)]


def _image(spec: str) -> str:
    """Accept an absolute path or an nbd:// URL Ferry built."""
    if isinstance(spec, str) and spec.startswith("nbd://"):
        match = re.match(r"^nbd://(\[[0-9A-Fa-f:.]+\]|[^/:\[\]]+):(\d+)/(.+)$", spec)
        if not match:
            raise RefusedCommand(f"not an NBD URL: {spec!r}")
        host = match.group(1).strip("[]")
        return nbd_url(host, match.group(3), int(match.group(2)))
    return _path(spec)


def compare_with_export(address: str, name: str, port: int, path: str, fmt: str,
                        tls_dir: str | None = None, block: bool = False) -> list[str]:
    """Compare an export (read as raw, over TLS with tls_dir) with a local image of fmt.

    >>> compare_with_export("10.0.0.1", "ferry-1-0", 8081, "/img/w", "qcow2")[2:]
    ['-f', 'raw', '-F', 'qcow2', 'nbd://10.0.0.1:8081/ferry-1-0', '/img/w']
    >>> compare_with_export("10.0.0.1", "e", 8081, "/img/w", "qcow2", tls_dir="/p")[-2:]
    ['driver=nbd,host=10.0.0.1,port=8081,export=e,tls-creds=tls0', 'driver=qcow2,file.driver=file,file.filename=/img/w']
    >>> compare_with_export("10.0.0.1", "e", 8081, "/dev/vg/w", "raw", tls_dir="/p", block=True)[-1]
    'driver=raw,file.driver=host_device,file.filename=/dev/vg/w'
    """
    if tls_dir is None:
        return compare(nbd_url(address, name, port), "raw", path, fmt)
    options, image = nbd_source(address, name, port, tls_dir)
    # --image-opts applies to both images: the local one is spelled as options too (a
    # logical volume through host_device: QEMU's file driver takes regular files only).
    protocol = "host_device" if block else "file"
    local = f"driver={_format(fmt)},file.driver={protocol},file.filename={_opt_path(path)}"
    return ["qemu-img", "compare", *options, image, local]


def image_info(path: str, fmt: str, force_share: bool = False) -> list[str]:
    """Describe an image as JSON (virtual-size, actual-size, format).

    fmt is the format from the definition, always passed with -f: a node must
    not get to choose how its file is read (a raw disk whose guest wrote a qcow2
    header would otherwise be read through that header). force_share (-U)
    reads an image a running QEMU holds open.

    >>> image_info("/img/web.qcow2", "qcow2", force_share=True)
    ['qemu-img', 'info', '--output=json', '-f', 'qcow2', '-U', '/img/web.qcow2']
    """
    return ["qemu-img", "info", "--output=json", "-f", _format(fmt),
            *(["-U"] if force_share else []), _image(path)]


def parse_virtual_size(text: str) -> int:
    """The virtual size in bytes from `qemu-img info --output=json`; ValueError on anything else.

    The JSON comes from a node, so its shape is checked, never assumed.

    >>> parse_virtual_size('{"virtual-size": 1073741824, "format": "raw"}')
    1073741824
    """
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON: {(text or '').strip()[:80]!r}") from exc
    size = doc.get("virtual-size") if isinstance(doc, dict) else None
    if type(size) is not int or not 0 < size <= _MAX_IMAGE:
        raise ValueError(f"no plausible virtual-size in {(text or '').strip()[:80]!r}")
    return size


def create_disk(path: str, fmt: str, size: int) -> list[str]:
    """Pre-create a sparse destination disk (live migration: libvirt fills it).

    libvirt would otherwise create a fully allocated qcow2 by itself.

    >>> create_disk("/img/web.qcow2", "qcow2", 1073741824)
    ['qemu-img', 'create', '-f', 'qcow2', '-o', 'preallocation=off', '/img/web.qcow2', '1073741824']
    """
    options = ["-o", "preallocation=off"] if _format(fmt) == "qcow2" else []
    return ["qemu-img", "create", "-f", fmt, *options, _path(path), str(_size(size))]


def rename_disk(tmp_path: str, final_path: str) -> list[str]:
    """Move a verified temporary disk to its final name, never over an existing file.

    A hard link is created only if the name is free, atomically, so two tasks
    (FERRY_TASKS_PER_RESOURCE > 1) can never both take one name; the temporary
    name is dropped after.
    """
    return ["sh", "-c",
            'ln -T -- "$1" "$2" || { echo "refusing to overwrite $2" >&2; exit 17; };'
            ' rm -f -- "$1"',
            "ferry-rename", _path(tmp_path), _path(final_path)]


def renamed(tmp_path: str, final_path: str) -> list[str]:
    """Print "ours" when final_path is what tmp_path was (a rename that reached the node, though
    its caller may never have heard back), else "not ours".

    The final name is ours when it exists and the temporary one is gone (lvrename is atomic;
    the temporary name is the task's own) or is the same file (`rename_disk` linked it and did
    not yet drop the temporary name). A final name that was taken by something else leaves
    the temporary one in place, so it is never called ours.
    """
    return ["sh", "-c",
            'if [ -e "$2" ] && { [ ! -e "$1" ] || [ "$1" -ef "$2" ]; };'
            ' then echo ours; else echo "not ours"; fi',
            "ferry-renamed", _path(tmp_path), _path(final_path)]


def remove_disk(path: str, allowed_dirs: Iterable[str]) -> list[str]:
    """Remove a disk file, only if it lies inside one of allowed_dirs.

    Refuses anything else (devices, the directory itself, paths with ..),
    because a wrong inventory row must never make Ferry delete a random file.

    >>> remove_disk("/var/lib/libvirt/images/web.qcow2", ["/var/lib/libvirt/images"])
    ['rm', '-f', '--', '/var/lib/libvirt/images/web.qcow2']
    """
    path = _path(path)
    for directory in allowed_dirs:
        directory = _path(directory.rstrip("/") or "/")
        if directory != "/" and posixpath.commonpath([directory, path]) == directory \
                and path != directory:
            return ["rm", "-f", "--", path]
    raise RefusedCommand(f"refusing to remove {path!r}: not inside {list(allowed_dirs)!r}")


# ---------------------------------------------------------------- probes

def port_listener(bind_address: str, port: int, timeout_s: int = 15) -> list[str]:
    """Listen once on the destination so a port probe has something to reach.

    A closed port and a port nobody listens on both read "Connection
    refused": the listener makes the probe tell them apart. `timeout`
    guarantees it never lingers.
    """
    return ["timeout", str(int(timeout_s)), "socat", "-u",
            f"TCP-LISTEN:{_port(port)},bind={_address(bind_address)},reuseaddr",
            "OPEN:/dev/null"]


def port_probe(address: str, port: int, timeout_s: int = 3) -> list[str]:
    """Connect from the source to ADDR:PORT (exit 0 = reachable, stderr says why not)."""
    return ["socat", "-u", "OPEN:/dev/null",
            f"TCP:{_host_port(address, port)},connect-timeout={int(timeout_s)}"]


def probe_result(exit_code: int, stderr: str) -> str:
    """Turn a port probe's outcome into "ok" or a short reason for preflight.

    >>> probe_result(0, "")
    'ok'
    >>> probe_result(1, "2026/01/01 socat[1] E connect(5, AF=2 10.0.0.2:49152, 16): Connection refused")
    'Connection refused'
    """
    if exit_code == 0:
        return "ok"
    lines = [line for line in (stderr or "").strip().splitlines() if line.strip()]
    if not lines:
        return f"failed (exit {exit_code})"
    last = lines[-1]
    reason = last.rsplit("): ", 1)[-1].strip() if "): " in last else last.strip()
    return reason[:200] or f"failed (exit {exit_code})"  # the node's text, kept short


def throughput_receiver(bind_address: str, port: int = PROBE_PORT,
                        timeout_s: int = 60) -> list[str]:
    """Receive and discard the throughput probe's bytes on the destination."""
    return port_listener(bind_address, port, timeout_s)


def throughput_sender(address: str, nbytes: int, port: int = PROBE_PORT) -> list[str]:
    """Send nbytes of zeros from the source; dd's summary line gives the rate.

    Zeros are fine: nothing on the path compresses TCP. socat retries the
    connection while the receiver starts. The count is in MiB, rounded up.
    """
    mib = max(1, -(-_size(nbytes) // 2**20))
    target = f"TCP:{_host_port(address, port)},connect-timeout=5,retry=25,interval=0.2"
    return ["sh", "-c", 'dd if=/dev/zero bs=1M count="$1" | socat -u STDIN "$2"',
            "ferry-probe", str(mib), target]


def parse_dd_rate(stderr: str) -> Optional[float]:
    """Return bytes per second from dd's summary, or None.

    >>> parse_dd_rate("268435456 bytes (268 MB, 256 MiB) copied, 0.5 s, 537 MB/s")
    536870912.0
    """
    match = _DD_SUMMARY.search(stderr or "")
    if not match:
        return None
    seconds = float(match.group(2).replace(",", "."))
    return int(match.group(1)) / seconds if seconds > 0 else None


def parse_convert_progress(output: str) -> Optional[float]:
    """Return the last percentage `qemu-img convert -p` printed, or None.

    >>> parse_convert_progress("    (0.00/100%)\\r    (42.50/100%)\\r")
    42.5
    """
    found = [float(p) for p in _PROGRESS.findall(output or "") if float(p) <= 100]
    return found[-1] if found else None


# ---------------------------------------------------------------- exclusive files, small state

def create_disk_exclusive(path: str, fmt: str, size: int) -> list[str]:
    """Pre-create a sparse destination disk only if no file has that name (O_EXCL via noclobber).

    Exit 17 when the name is taken: two moves never write into one file.

    >>> create_disk_exclusive("/img/w.raw", "raw", 1024)[4:]
    ['/img/w.raw', 'qemu-img', 'create', '-f', 'raw', '/img/w.raw', '1024']
    """
    return ["sh", "-c",
            'set -C; { : > "$1"; } 2>/dev/null || { echo "refusing to overwrite $1" >&2; exit 17; };'
            ' shift; exec "$@"',
            "ferry-create", _path(path), *create_disk(path, fmt, size)]


def read_base64(path: str) -> list[str]:
    """Print a small file (NVRAM) as base64 on one line."""
    return ["base64", "-w0", "--", _path(path)]


def write_base64_exclusive(path: str) -> list[str]:
    """Write base64 from stdin into a new file (never over an existing one), its folder made."""
    return ["sh", "-c",
            'mkdir -p -- "$(dirname -- "$1")" && set -C && base64 -d > "$1"',
            "ferry-write", _path(path)]


def tar_out(directory: str) -> list[str]:
    """Print a directory (TPM state) as a base64 tar stream."""
    parent, name = posixpath.split(_path(directory))
    return ["sh", "-c", 'tar -C "$1" -cf - -- "$2" | base64 -w0', "ferry-tar", parent, name]


def tar_in_exclusive(directory: str) -> list[str]:
    """Unpack a base64 tar stream from stdin as `directory`, refusing if it exists."""
    parent, name = posixpath.split(_path(directory))
    return ["sh", "-c",
            'if [ -e "$1/$2" ]; then echo "refusing to overwrite $1/$2" >&2; exit 17; fi;'
            ' mkdir -p -- "$1" && base64 -d | tar -C "$1" -xf -',
            "ferry-untar", parent, name]


def remove_tree(directory: str, allowed_parent: str) -> list[str]:
    """Remove a state directory (TPM) only if it sits directly in allowed_parent.

    >>> remove_tree("/var/lib/libvirt/swtpm/u-1", "/var/lib/libvirt/swtpm")
    ['rm', '-rf', '--', '/var/lib/libvirt/swtpm/u-1']
    """
    path, parent = _path(directory), _path(allowed_parent)
    if posixpath.dirname(path) != parent:
        raise RefusedCommand(f"refusing to remove {path!r}: not directly in {parent!r}")
    return ["rm", "-rf", "--", path]

"""Storage commands: argument lists, quoting, and real runs of qemu-img and qemu-nbd.

Every command is checked at the argv level. The file ones (qemu-img create,
convert, compare, info, the qemu-nbd export and its stop, rename, remove,
the socat probes) are ALSO run for real here on temp files and 127.0.0.1,
through `sh -c to_shell(argv)` exactly as SSH runs them. The LVM ones
(lvcreate, lvremove, lvrename, convert into a volume) are checked at the
command level only: this machine has no device-mapper, so lvcreate cannot
work here (see LAB.md).
"""

import json
import os
import shlex
import socket
import subprocess
import time

import pytest

from app.infra.commands import storage as cmd
from app.infra.commands.storage import RefusedCommand

HOSTILE = ["db;touch x", "web$(id)", "two words", "it's \"quoted\"", "back`tick`", "-rf"]
MIB = 2 ** 20
GIB_1 = 2 ** 30


def sh(argv, cwd=None, check=True):
    """Run argv through a shell line, as the SSH layer does."""
    return subprocess.run(["sh", "-c", cmd.to_shell(argv)], cwd=cwd, check=check,
                          capture_output=True, text=True, timeout=60)


def free_port():
    """Return a TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def convert_file(src, src_fmt, dst, dst_fmt):
    """A local qemu-img conversion to set a test up (Ferry itself only converts from an export)."""
    return ["qemu-img", "convert", "-f", src_fmt, "-O", dst_fmt, src, dst]


def write_pattern(path, size=64 * MIB):
    """Write a raw image with data at a few places and holes elsewhere."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in (0, 5 * MIB, 40 * MIB):
            f.seek(offset)
            f.write(os.urandom(MIB))


def allocated(path):
    """Bytes really allocated on disk for a file."""
    return os.stat(path).st_blocks * 512


# ---------------------------------------------------------------- argv level

@pytest.mark.parametrize("name", HOSTILE)
def test_it_keeps_hostile_names_single_quoted_arguments(name):
    path = f"/var/lib/libvirt/images/{name}.qcow2"
    for argv in (cmd.create_disk(path, "qcow2", GIB_1),
                 cmd.image_info(path, "qcow2"), cmd.remove_disk(path, ["/var/lib/libvirt/images"]),
                 cmd.nbd_export(path, "qcow2", "10.0.0.1", "ferry-1-0", "/run/ferry/1.pid"),
                 cmd.rename_disk(path + ".part", path)):
        line = cmd.to_shell(argv)
        assert shlex.split(line) == argv  # the shell gives back exactly these arguments
        assert shlex.quote(path) in line



def test_it_builds_the_nbd_export_with_a_pid_file_and_the_source_address():
    argv = cmd.nbd_export("/img/web.qcow2", "qcow2", "10.77.0.11", "ferry-3-0", "/run/f/3-0.pid")
    assert argv == ["qemu-nbd", "--read-only", "--persistent", "--shared=1", "--fork",
                    "--pid-file=/run/f/3-0.pid", "--bind", "10.77.0.11", "--port", "8081",
                    "--format", "qcow2", "--export-name", "ferry-3-0", "--", "/img/web.qcow2"]


def test_it_reads_the_decoded_export_as_raw_whatever_the_target():
    to_raw = cmd.convert_from_nbd("10.77.0.11", "ferry-3-0", "/img/.web.part", "raw")
    assert to_raw == ["qemu-img", "convert", "-p", "-f", "raw", "-O", "raw", "-S", "4k",
                      "nbd://10.77.0.11:8081/ferry-3-0", "/img/.web.part"]
    to_qcow2 = cmd.convert_from_nbd("fd00::11", "ferry-3-0", "/img/.web.part", "qcow2")
    assert to_qcow2[6:10] == ["qcow2", "-o", "preallocation=off", "nbd://[fd00::11]:8081/ferry-3-0"]


def test_it_serves_and_reads_the_export_over_tls_with_verified_peers():
    export = cmd.nbd_export("/img/web.qcow2", "qcow2", "10.77.0.11", "ferry-3-0-tok", "/run/p.pid",
                            tls_dir="/etc/ferry/pki/nbd")
    assert export[6:10] == ["--object", "tls-creds-x509,id=tls0,endpoint=server,"
                            "dir=/etc/ferry/pki/nbd,verify-peer=on", "--tls-creds", "tls0"]
    copy = cmd.convert_from_nbd("10.77.0.11", "ferry-3-0-tok", "/img/.web.part", "raw",
                                port=8083, tls_dir="/etc/ferry/pki/nbd")
    assert copy == ["qemu-img", "convert", "-p", "--object",
                    "tls-creds-x509,id=tls0,endpoint=client,dir=/etc/ferry/pki/nbd", "--image-opts",
                    "-O", "raw", "-S", "4k",
                    "driver=nbd,host=10.77.0.11,port=8083,export=ferry-3-0-tok,tls-creds=tls0",
                    "/img/.web.part"]
    assert "-f" not in copy  # --image-opts and -f exclude each other
    same = cmd.compare_with_export("10.77.0.11", "e", 8083, "/img/a,b.qcow2", "qcow2", tls_dir="/p")
    assert same[-1] == "driver=qcow2,file.driver=file,file.filename=/img/a,,b.qcow2"


def test_it_gives_every_export_a_random_unguessable_name():
    first, second = cmd.export_token(), cmd.export_token()
    assert first != second and len(first) >= 16
    assert cmd.export_name(7, 1, first) == f"ferry-7-1-{first}"
    with pytest.raises(RefusedCommand):
        cmd.export_name(7, 1, "a/b")


def test_it_builds_lvm_commands_at_the_command_level_only():
    """No device-mapper on this machine: these are never run here."""
    assert cmd.lvcreate("vg0", "web-disk0", 10 * GIB_1) == [
        "lvcreate", "--yes", "--wipesignatures", "y", "-n", "web-disk0", "-L", "10737418240b", "vg0"]
    assert cmd.lvcreate_thin("vg0", "pool0", "web-disk0", GIB_1) == [
        "lvcreate", "--yes", "-V", "1073741824b", "-T", "vg0/pool0", "-n", "web-disk0"]
    assert cmd.lvremove("vg0", "web-disk0") == ["lvremove", "--yes", "vg0/web-disk0"]
    assert cmd.lvrename("vg0", "web-disk0.part", "web-disk0") == [
        "lvrename", "vg0", "web-disk0.part", "web-disk0"]


@pytest.mark.parametrize("name", HOSTILE + ["", "a/b", "-x"])
def test_it_refuses_names_that_tools_would_parse(name):
    with pytest.raises(RefusedCommand):
        cmd.lvcreate("vg0", name, GIB_1)
    with pytest.raises(RefusedCommand):
        cmd.nbd_url("10.0.0.1", name)


@pytest.mark.parametrize("address", ["10.0.0.1,fork", "10.0.0.1:22", "host name", "$(id)", ""])
def test_it_refuses_addresses_that_would_inject_socat_or_url_options(address):
    with pytest.raises(RefusedCommand):
        cmd.port_probe(address, 49152)
    with pytest.raises(RefusedCommand):
        cmd.nbd_export("/img/a", "raw", address, "ferry-1-0", "/run/p.pid")


def test_it_removes_only_files_inside_allowed_directories():
    allowed = ["/var/lib/libvirt/images"]
    assert cmd.remove_disk("/var/lib/libvirt/images/a/b.raw", allowed)[-1] == "/var/lib/libvirt/images/a/b.raw"
    for path in ("/etc/passwd", "/var/lib/libvirt/images", "/var/lib/libvirt/images/../x",
                 "/var/lib/libvirt/imagesX/a", "relative.qcow2", "/dev/vg0/web", "/"):
        with pytest.raises(RefusedCommand):
            cmd.remove_disk(path, allowed)
    with pytest.raises(RefusedCommand):
        cmd.remove_disk("/anything", ["/"])  # never the whole tree


def test_it_builds_probe_commands_for_socat():
    assert cmd.port_probe("10.0.0.2", 49152) == [
        "socat", "-u", "OPEN:/dev/null", "TCP:10.0.0.2:49152,connect-timeout=3"]
    assert cmd.port_listener("10.0.0.2", 49152, 10) == [
        "timeout", "10", "socat", "-u", "TCP-LISTEN:49152,bind=10.0.0.2,reuseaddr", "OPEN:/dev/null"]


def test_it_parses_progress_and_probe_outputs():
    assert cmd.parse_convert_progress("    (0.00/100%)\r    (99.61/100%)\r") == 99.61
    assert cmd.parse_convert_progress("") is None
    assert cmd.probe_result(0, "") == "ok"
    assert cmd.probe_result(1, "") == "failed (exit 1)"
    assert cmd.parse_dd_rate("1048576 bytes (1.0 MB, 1.0 MiB) copied, 0,5 s, 2.1 MB/s") == 2097152.0
    assert cmd.parse_dd_rate("dd: error") is None


# ---------------------------------------------------------------- real runs

def test_it_creates_sparse_disks_for_real_with_a_hostile_name(tmp_path):
    path = str(tmp_path / "db;touch x $(id) 'q'.qcow2")
    sh(cmd.create_disk(path, "qcow2", GIB_1), cwd=tmp_path)
    assert os.path.exists(path) and not (tmp_path / "x").exists()
    info = json.loads(sh(cmd.image_info(path, "qcow2")).stdout)
    assert (info["format"], info["virtual-size"]) == ("qcow2", GIB_1)
    assert allocated(path) < 2 * MIB  # sparse, not inflated
    raw = str(tmp_path / "web$(id).raw")
    sh(cmd.create_disk(raw, "raw", GIB_1), cwd=tmp_path)
    assert os.path.getsize(raw) == GIB_1 and allocated(raw) < MIB


def test_it_converts_compares_renames_and_removes_for_real(tmp_path):
    src = str(tmp_path / "two words.raw")
    write_pattern(src)
    qcow2 = cmd.temp_path(str(tmp_path / "web.qcow2"), 5)
    sh(convert_file(src, "raw", qcow2, "qcow2"))
    assert allocated(qcow2) < 8 * MIB  # 3 MiB of data, holes skipped
    back = str(tmp_path / "back.raw")
    sh(convert_file(qcow2, "qcow2", back, "raw"))
    assert allocated(back) < 8 * MIB
    assert sh(cmd.compare(src, "raw", qcow2, "qcow2")).returncode == 0
    with open(back, "r+b") as f:  # one changed byte is seen
        f.seek(40 * MIB)
        f.write(b"\0")
    assert sh(cmd.compare(src, "raw", back, "raw"), check=False).returncode == 1

    final = str(tmp_path / "web.qcow2")
    sh(cmd.rename_disk(qcow2, final))
    assert os.path.exists(final) and not os.path.exists(qcow2)
    sh(cmd.create_disk(qcow2, "qcow2", MIB))
    refused = sh(cmd.rename_disk(qcow2, final), check=False)  # never over an existing disk
    assert refused.returncode == 17 and os.path.exists(qcow2)

    sh(cmd.remove_disk(final, [str(tmp_path)]))
    assert not os.path.exists(final)


def test_it_exports_with_qemu_nbd_and_copies_over_tcp_for_real(tmp_path):
    src_raw = str(tmp_path / "seed.raw")
    write_pattern(src_raw)
    src = str(tmp_path / "web$(id) db;x.qcow2")
    sh(convert_file(src_raw, "raw", src, "qcow2"))
    port, pid_file = free_port(), str(tmp_path / "nbd.pid")
    sh(cmd.nbd_export(src, "qcow2", "127.0.0.1", "ferry-9-0", pid_file, port=port))
    pid = int(open(pid_file).read())
    try:
        url = cmd.nbd_url("127.0.0.1", "ferry-9-0", port)
        for fmt in ("raw", "qcow2"):
            dst = str(tmp_path / f".dst.{fmt}.part")
            out = sh(cmd.convert_from_nbd("127.0.0.1", "ferry-9-0", dst, fmt, port=port))
            assert cmd.parse_convert_progress(out.stdout) == 100.0
            assert allocated(dst) < 8 * MIB  # holes stayed holes across NBD
            assert sh(cmd.compare(url, "raw", dst, fmt)).returncode == 0  # verify step
            assert sh(cmd.compare(src_raw, "raw", dst, fmt)).returncode == 0
        info = json.loads(sh(cmd.image_info(url, "raw")).stdout)
        assert info["virtual-size"] == 64 * MIB
        # read-only: a write through the export is refused
        write = subprocess.run(["qemu-io", "-f", "raw", "-c", "write 0 512", url],
                               capture_output=True, text=True, timeout=30)
        assert write.returncode != 0 and "Permission denied" in write.stderr
    finally:
        sh(cmd.stop_by_pid_file(pid_file), check=False)
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("qemu-nbd still runs after stop")
    assert not os.path.exists(pid_file)


def _credentials(directory, name, address, ca=None):
    """Write a node's five credential files, from a new CA unless one is given."""
    from app.infra import pki
    ca_key, ca_cert = ca or pki.create_ca()
    os.makedirs(directory, exist_ok=True)
    for file_name, pem in pki.issue(ca_key, ca_cert, name, address).items():
        with open(os.path.join(directory, file_name), "wb") as handle:
            handle.write(pem)
    return ca_key, ca_cert


def test_it_copies_over_tls_for_real_and_refuses_clients_without_ferrys_certificate(tmp_path):
    src = str(tmp_path / "seed.raw")
    write_pattern(src, size=8 * MIB)
    ca = _credentials(str(tmp_path / "server"), "node1", "127.0.0.1")
    _credentials(str(tmp_path / "client"), "node2", "127.0.0.2", ca=ca)
    _credentials(str(tmp_path / "stranger"), "node3", "127.0.0.3")  # another CA
    port, pid_file = free_port(), str(tmp_path / "nbd.pid")
    sh(cmd.nbd_export(src, "raw", "127.0.0.1", "ferry-9-0-x", pid_file, port=port,
                      tls_dir=str(tmp_path / "server")))
    try:
        dst = str(tmp_path / ".dst.part")
        sh(cmd.convert_from_nbd("127.0.0.1", "ferry-9-0-x", dst, "qcow2", port=port,
                                tls_dir=str(tmp_path / "client")))
        # --shared=1: the copy's client has gone, so the verify pass gets in after it
        same = sh(cmd.compare_with_export("127.0.0.1", "ferry-9-0-x", port, dst, "qcow2",
                                          tls_dir=str(tmp_path / "client")), check=False)
        assert same.returncode == 0, same.stderr
        plain = sh(cmd.convert_from_nbd("127.0.0.1", "ferry-9-0-x", dst + "2", "raw", port=port),
                   check=False)
        assert plain.returncode != 0 and "TLS" in plain.stderr
        stranger = sh(cmd.convert_from_nbd("127.0.0.1", "ferry-9-0-x", dst + "3", "raw", port=port,
                                           tls_dir=str(tmp_path / "stranger")), check=False)
        assert stranger.returncode != 0
    finally:
        sh(cmd.stop_by_pid_file(pid_file), check=False)


def test_it_probes_ports_for_real():
    port = free_port()
    closed = sh(cmd.port_probe("127.0.0.1", port, timeout_s=2), check=False)
    assert cmd.probe_result(closed.returncode, closed.stderr) == "Connection refused"
    listener = subprocess.Popen(["sh", "-c", cmd.to_shell(cmd.port_listener("127.0.0.1", port, 10))])
    try:
        result = None
        for _ in range(50):  # the listener needs a moment to bind
            probe = sh(cmd.port_probe("127.0.0.1", port, timeout_s=2), check=False)
            result = cmd.probe_result(probe.returncode, probe.stderr)
            if result == "ok":
                break
            time.sleep(0.1)
        assert result == "ok"
    finally:
        listener.wait(timeout=15)


def test_it_measures_throughput_for_real():
    port = free_port()
    receiver = subprocess.Popen(
        ["sh", "-c", cmd.to_shell(cmd.throughput_receiver("127.0.0.1", port, 30))])
    try:
        sent = sh(cmd.throughput_sender("127.0.0.1", 64 * MIB, port))
        rate = cmd.parse_dd_rate(sent.stderr)
        assert rate and rate > 10 * MIB
    finally:
        receiver.wait(timeout=30)
    assert receiver.returncode == 0


def test_it_tells_a_final_name_a_rename_reached_from_one_that_was_taken(tmp_path):
    """The script `renamed` runs here for real on files (on a node, also on /dev/VG/LV)."""
    def ask(tmp, final):
        return subprocess.run(cmd.renamed(str(tmp), str(final)), capture_output=True,
                              text=True, check=True).stdout.strip()
    tmp, final = tmp_path / ".web.part", tmp_path / "web"
    tmp.write_bytes(b"copy")
    assert ask(tmp, final) == "not ours"  # the rename never ran
    os.link(tmp, final)
    assert ask(tmp, final) == "ours"  # linked, the temporary name not dropped yet
    tmp.unlink()
    assert ask(tmp, final) == "ours"  # renamed
    tmp.write_bytes(b"copy")
    assert ask(tmp, final) == "not ours"  # the final name is another file: it was taken


def test_it_zeroes_exactly_the_tail_it_is_given(tmp_path):
    """`zero_range` runs here for real on a file (on a node, on a new thick volume)."""
    device = tmp_path / "lv"
    device.write_bytes(b"\xff" * 10000)
    subprocess.run(cmd.zero_range(str(device), 4097, 5903), check=True)
    data = device.read_bytes()
    assert data == b"\xff" * 4097 + b"\0" * 5903


def test_it_passes_the_doctests_of_the_command_builders():
    import doctest
    assert doctest.testmod(cmd).failed == 0

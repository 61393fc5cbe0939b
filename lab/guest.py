"""The tiny lab guest: a Debian kernel, a busybox initramfs and a seeded ext4 disk.

Built once from Debian packages into /var/lib/ferry-lab/guest/<hash>/ and shared by
every lab instance; rebuilt only when an input (kernel package, busybox, the files in
guest_files/) changes.
"""
import fcntl
import glob
import gzip
import hashlib
import os
import random
import re
import shutil
import tempfile

from .common import GUEST_DIR, LAB_DIR, LabError, run

FILES = os.path.join(LAB_DIR, "guest_files")
DOWNLOADS = os.path.join(GUEST_DIR, "dl")
MODULES = ["virtio_pci", "virtio_blk", "virtio_net", "crc32c_generic", "ext4", "dmi_sysfs",
           "button", "evdev"]
SEED_MIB = 16


def kernel_deb():
    """The cached linux-image .deb, downloaded with apt-get the first time."""
    os.makedirs(DOWNLOADS, exist_ok=True)
    debs = sorted(glob.glob(os.path.join(DOWNLOADS, "linux-image-*.deb")))
    if debs:
        return debs[-1]
    depends = run(["apt-cache", "depends", "linux-image-amd64"]).stdout
    pkgs = [line.split(":", 1)[1].strip() for line in depends.splitlines()
            if line.strip().startswith("Depends: linux-image-")]
    if not pkgs:
        raise LabError("cannot find the package behind linux-image-amd64")
    run(["apt-get", "download", pkgs[0]], timeout=600, env=dict(os.environ, TMPDIR="/tmp"))
    for deb in glob.glob(f"{pkgs[0]}_*.deb"):
        shutil.move(deb, DOWNLOADS)
    return kernel_deb()


def _inputs_hash(deb):
    h = hashlib.sha256(os.path.basename(deb).encode())
    for path in ["/bin/busybox"] + sorted(glob.glob(os.path.join(FILES, "*"))):
        with open(path, "rb") as f:
            h.update(path.encode() + hashlib.sha256(f.read()).digest())
    h.update(" ".join(MODULES).encode())
    return h.hexdigest()[:12]


def build():
    """Return the build folder (vmlinuz, initrd.img, seed), building it when needed."""
    deb = kernel_deb()
    out = os.path.join(GUEST_DIR, _inputs_hash(deb))
    if os.path.exists(os.path.join(out, "done")):
        return out
    # Several lab commands (and engineers) may build at once: one builds, the others wait.
    with open(os.path.join(GUEST_DIR, ".build.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(out, "done")):
            shutil.rmtree(out, ignore_errors=True)  # a build interrupted half-way
            tmp = tempfile.mkdtemp(prefix="build-", dir=GUEST_DIR)
            try:
                _build_into(deb, tmp, os.path.join(tmp, "out"))
                os.rename(os.path.join(tmp, "out"), out)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return out


def _build_into(deb, tmp, out):
    """Unpack the kernel, collect modules, make the initramfs and the seed in out."""
    kroot = os.path.join(tmp, "kernel")
    run(["dpkg-deb", "-x", deb, kroot], timeout=300)
    kver = os.listdir(os.path.join(kroot, "lib", "modules"))[0]
    run(["depmod", "-b", kroot, kver])
    root = os.path.join(tmp, "initramfs")
    for d in ("bin", "etc", "lib/modules", "www/cgi-bin"):
        os.makedirs(os.path.join(root, d))
    order = []
    for mod in MODULES:
        deps = run(["modprobe", "-d", kroot, "-S", kver, "--show-depends", mod]).stdout
        for line in deps.splitlines():
            if line.startswith("insmod ") and os.path.basename(line.split()[1]) not in order:
                order.append(os.path.basename(line.split()[1]))
                shutil.copy(line.split()[1], os.path.join(root, "lib", "modules"))
    with open(os.path.join(root, "etc", "modules"), "w") as f:
        f.write("\n".join(order) + "\n")
    shutil.copy("/bin/busybox", os.path.join(root, "bin", "busybox"))
    shutil.copy(os.path.join(FILES, "init"), os.path.join(root, "init"))
    shutil.copy(os.path.join(FILES, "status"), os.path.join(root, "www", "cgi-bin"))
    run(["gcc", "-static", "-O2", "-o", os.path.join(root, "bin", "dirtier"),
         os.path.join(FILES, "dirtier.c")])
    for p in ("init", "www/cgi-bin/status", "bin/busybox", "bin/dirtier"):
        os.chmod(os.path.join(root, p), 0o755)
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        names += [os.path.normpath(os.path.join(rel, n)) for n in dirnames + filenames]
    cpio = run_bytes(["cpio", "-o", "-H", "newc", "--quiet"], root, "\n".join(names))
    os.makedirs(out)
    with open(os.path.join(out, "initrd.img"), "wb") as f:
        f.write(gzip.compress(cpio, 6))
    shutil.copy(os.path.join(kroot, "boot", f"vmlinuz-{kver}"), os.path.join(out, "vmlinuz"))
    _make_seed(os.path.join(out, "seed"))
    open(os.path.join(out, "done"), "w").close()


def run_bytes(argv, cwd, stdin_text):
    """Run argv in cwd with text on stdin and return its binary stdout."""
    import subprocess
    proc = subprocess.run(argv, cwd=cwd, input=stdin_text.encode(), capture_output=True)
    if proc.returncode:
        raise LabError(f"{argv[0]} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def _make_seed(folder):
    """The files every guest disk starts with: deterministic data and its md5."""
    os.makedirs(folder)
    data = random.Random(20240601).randbytes(SEED_MIB << 20)
    with open(os.path.join(folder, "seed"), "wb") as f:
        f.write(data)
    with open(os.path.join(folder, "seed.md5"), "w") as f:
        f.write(hashlib.md5(data).hexdigest() + "\n")
    open(os.path.join(folder, "heartbeat"), "w").close()


def _write_fill(build_dir, raw, mib):
    """Put mib MiB of random (incompressible, never zero) data into the filesystem as /fill."""
    data = os.path.join(build_dir, f".fill-{mib}M.tmp{os.getpid()}")
    try:
        with open(data, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))
        run(["debugfs", "-w", "-R", f"write {data} fill", raw])
        # debugfs exits 0 when a request fails: the size in the filesystem is the proof.
        listed = run(["debugfs", "-R", "stat /fill", raw]).stdout
        if f"Size: {mib << 20}" not in listed:
            raise LabError(f"debugfs did not write the {mib} MiB fill file: {listed[-400:]}")
    finally:
        os.unlink(data)


def seed_md5(build_dir):
    """The md5 of the seed file on every fresh guest disk."""
    with open(os.path.join(build_dir, "seed", "seed.md5")) as f:
        return f.read().strip()


def disk_size_mib(size):
    """A disk size in MiB from an int (GiB) or a string: "2" or "2G" (GiB), "256M" (MiB)."""
    found = re.fullmatch(r"(\d+)([MG]?)", str(size).strip().upper())
    if not found:
        raise LabError(f"a disk size is a number of GiB or MiB, like 1G or 256M, not {size!r}")
    mib = int(found.group(1)) * (1 if found.group(2) == "M" else 1024)
    if mib < 64 or mib % 4:
        raise LabError(f"a disk needs at least 64 MiB, in whole 4 MiB extents: {size!r}")
    return mib


def disk_template(build_dir, size, fmt, fill=0):
    """A sparse seeded disk of `size` (see disk_size_mib) in fmt (raw|qcow2), cached per size,
    fill and format. fill: MiB of random data in the file /fill, so a disk holds that much
    data a migration must copy (the seed alone is a few MiB)."""
    mib = disk_size_mib(size)
    if fill < 0 or fill > mib - 64:
        raise LabError(f"--fill takes 0 to {mib - 64} MiB on a {mib} MiB disk, not {fill}")
    label = (f"{mib >> 10}G" if mib % 1024 == 0 else f"{mib}M") + (f"-fill{fill}M" if fill else "")
    path = os.path.join(build_dir, f"disk-{label}.{fmt}")
    if os.path.exists(path):
        return path
    raw = os.path.join(build_dir, f".disk-{label}.raw.tmp{os.getpid()}")
    with open(raw, "wb") as f:
        f.truncate(mib << 20)
    run(["mkfs.ext4", "-q", "-F", "-L", "ferry", "-d", os.path.join(build_dir, "seed"), raw])
    if fill:
        _write_fill(build_dir, raw, fill)
    tmp = f"{path}.tmp{os.getpid()}"
    if fmt == "qcow2":
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, tmp])
        os.unlink(raw)
    else:
        os.rename(raw, tmp)
    os.rename(tmp, path)
    return path

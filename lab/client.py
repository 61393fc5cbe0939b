"""A lab instance as a program sees it (lab/ferry-lab driven from Python): the tests' fixtures
and the benchmarks both drive the lab through here, so neither imports the other."""
import fcntl
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FERRY_LAB = os.path.join(ROOT, "lab", "ferry-lab")
# The Makefile sets these; the defaults keep a bare `pytest tests/lab` or `python -m bench`
# off the demo's lab.
TEST_LAB_NAME = os.environ.get("FERRY_LAB_NAME", "ferrytest")
TEST_LAB_NET = os.environ.get("FERRY_LAB_NET", "78")


# Set while a process holds a lab instance (hold below); its children (the benchmarks the
# tests run) inherit it and do not wait for their own parent.
HELD_ENV = "FERRY_LAB_HELD"


def hold(name=TEST_LAB_NAME, wait_s=3600.0, poll_s=2.0, say=None, root=None):
    """One test session or benchmark run at a time on a lab instance.

    Two `make test` runs on one machine share the instance's nodes (its state lives in
    /var/lib/ferry-lab/NAME, outside the clone): one's evacuation moved the other's servers,
    and both failed. The first to ask holds an exclusive lock until it exits (or closes the
    returned file); the next waits for it, says whom it waits for, and gives up with
    TimeoutError after wait_s. A child of the holder (HELD_ENV) passes at once (None).
    """
    if os.environ.get(HELD_ENV) == name:
        return None
    from lab.common import STATE_ROOT
    directory = os.path.join(root or STATE_ROOT, name)
    os.makedirs(directory, exist_ok=True)
    f = open(os.path.join(directory, ".session"), "a+")
    deadline, told = time.monotonic() + wait_s, False
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            if time.monotonic() >= deadline:
                f.close()
                raise TimeoutError(f"lab {name} is still in use by {holder} after {wait_s:.0f} s")
            if not told and say:
                say(f"lab {name} is in use by {holder}; waiting for it to finish")
            told = True
            time.sleep(poll_s)
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}: {' '.join(sys.argv)[:300]}\n")
    f.flush()
    os.environ[HELD_ENV] = name
    return f


def lab_env(name=TEST_LAB_NAME, net=TEST_LAB_NET):
    """The environment that selects a lab instance."""
    return dict(os.environ, FERRY_LAB_NAME=name, FERRY_LAB_NET=str(net))


class Lab:
    """A running lab instance, as the tests and the benchmarks see it."""

    def __init__(self, name=TEST_LAB_NAME, net=TEST_LAB_NET):
        self.env = lab_env(name, net)
        self.status = json.loads(self.cli("status", "--json").stdout)

    def cli(self, *argv, check=True, timeout=300):
        """Run `ferry-lab ARGV...` for this instance."""
        proc = subprocess.run([FERRY_LAB, *argv], env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode:
            raise AssertionError(f"ferry-lab {' '.join(argv)} failed ({proc.returncode}): "
                                 f"{proc.stderr}{proc.stdout}")
        return proc

    def node(self, name):
        """The status entry of one node."""
        return next(n for n in self.status["nodes"] if n["name"] == name)

    def exec(self, node, *argv, check=False, timeout=120):
        """Run argv inside a node; returns the CompletedProcess."""
        return self.cli("exec", node, "--", *argv, check=check, timeout=timeout)

    def ssh(self, node, command, check=False, timeout=60):
        """Run a command on a node over SSH with the pinned host keys."""
        n = self.node(node)
        return subprocess.run(
            ["ssh", "-i", self.status["ssh_key"], "-o", "IdentitiesOnly=yes",
             "-o", f"UserKnownHostsFile={self.status['known_hosts']}",
             "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-p", str(n["port"]),
             f"{n['user']}@{n['address']}", command],
            capture_output=True, text=True, timeout=timeout, check=check)

    def mkserver(self, node, name, **opts):
        """Create a server (ferry-lab mkserver); options as its flags, e.g. dirty_rate=20."""
        argv = ["mkserver", node, name, "--json"]
        for key, value in opts.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif value not in (None, False):
                argv += [flag, str(value)]
        return json.loads(self.cli(*argv).stdout)

    def rmserver(self, name):
        self.cli("rmserver", name)

    def servers(self):
        return json.loads(self.cli("servers", "--json").stdout)

    def ping(self, ip, count=1, timeout=1):
        """True when ip answers at least one of `count` pings from the probe side."""
        return subprocess.run(["ping", "-n", "-q", "-c", str(count), "-W", str(timeout), ip],
                              capture_output=True).returncode == 0

    def guest_status(self, ip):
        """The guest's /cgi-bin/status JSON."""
        return json.loads(self.cli("guest-status", ip, timeout=30).stdout)

    def wait_for_guest(self, ip, timeout=60):
        """Wait until the guest at ip serves its status page; return that status."""
        deadline = time.time() + timeout
        while True:
            try:
                return self.guest_status(ip)
            except AssertionError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)


def where(lab, name):
    """Nodes on which the lab sees a domain of that name, with its state."""
    return {s["node"]: s["state"] for s in lab.servers() if s["name"] == name}


def images(lab, node):
    """The files in a node's image folder (disks, temporary copies)."""
    listing = lab.exec(node, "ls", "-A", "/var/lib/libvirt/images", check=True).stdout
    return set(listing.split())


def image_info(lab, node, path):
    """`qemu-img info` of a disk inside a node, as a dict (virtual-size, actual-size, format)."""
    out = lab.exec(node, "qemu-img", "info", "-U", "--output=json", path, check=True).stdout
    return json.loads(out)

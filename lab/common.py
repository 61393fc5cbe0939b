"""Instance settings, state paths and the subprocess helpers every lab module uses."""
import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import time

MAX_LVM_NODES = 4  # lvm1.. (up --lvm-nodes N): addresses 10.NET.0.200..203

STATE_ROOT = "/var/lib/ferry-lab"
GUEST_DIR = os.path.join(STATE_ROOT, "guest")
LAB_DIR = os.path.dirname(os.path.abspath(__file__))
# What every process the lab starts sees: no host shell rc files, no proxies.
CLEAN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb"}


class LabError(Exception):
    """A lab operation failed; the message is meant for the person at the terminal."""


def run(argv, check=True, input=None, timeout=120, env=None):
    """Run argv (never a shell line); return the CompletedProcess with text output."""
    try:
        proc = subprocess.run([str(a) for a in argv], input=input, capture_output=True,
                              text=True, timeout=timeout, env=env or CLEAN_ENV)
    except subprocess.TimeoutExpired:
        raise LabError(f"timed out after {timeout}s: {' '.join(map(str, argv))}")
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(map(str, argv))} failed ({proc.returncode}): "
                       f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def pid_alive(pid):
    """True when a process with this PID exists (zombies count as dead)."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, ValueError, IndexError):
        return False


def read_pid(path):
    """The PID stored in a pid file, or None."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def ns_link(pid, kind):
    """The namespace identity (e.g. 'mnt:[4026...]') of a process, or None."""
    try:
        return os.readlink(f"/proc/{int(pid)}/ns/{kind}")
    except (OSError, TypeError, ValueError):
        return None


def kill_pids(pids, grace=3.0):
    """SIGTERM the given PIDs, then SIGKILL whatever is left after `grace` seconds."""
    pids = [p for p in pids if p and pid_alive(p)]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 3.0)):
        for p in pids:
            with contextlib.suppress(OSError):
                os.kill(p, sig)
        deadline = time.time() + wait
        while time.time() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.05)
        pids = [p for p in pids if pid_alive(p)]
        if not pids:
            return


def write_file(path, text, mode=0o644):
    """Write text to path atomically with the given mode."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


class Instance:
    """One independent lab, selected by FERRY_LAB_NAME and FERRY_LAB_NET."""

    def __init__(self, name=None, net=None):
        self.name = name or os.environ.get("FERRY_LAB_NAME") or "ferrylab"
        net = net or os.environ.get("FERRY_LAB_NET") or "77"
        # Interface names are derived from the instance name and must stay <= 15 chars.
        if not re.fullmatch(r"[a-z][a-z0-9]{0,8}", self.name) or self.name == "guest":
            raise LabError(f"FERRY_LAB_NAME={self.name!r}: use 1-9 lowercase letters/digits")
        if not str(net).isdigit() or not 1 <= int(net) <= 254:
            raise LabError(f"FERRY_LAB_NET={net!r}: use a number from 1 to 254")
        self.net = int(net)
        self.dir = os.path.join(STATE_ROOT, self.name)
        self.keys_dir = os.path.join(self.dir, "keys")
        self.nodes_dir = os.path.join(self.dir, "nodes")
        self.state_file = os.path.join(self.dir, "lab.json")
        self.client_key = os.path.join(self.keys_dir, "id_ed25519")
        self.known_hosts = os.path.join(self.keys_dir, "known_hosts")
        self.mgmt_bridge = f"{self.name}-m"
        self.guest_bridge = f"{self.name}-g"
        self.mgmt_gateway = f"10.{self.net}.0.1"
        self.guest_gateway = f"10.{self.net}.1.1"
        self.guest_cidr = f"10.{self.net}.1.0/24"

    def node_address(self, k):
        """Management/migration address of node k."""
        return f"10.{self.net}.0.{10 + k}"

    def lvm_address(self, k=1):
        """Management/migration address of LVM node k (lab/lvmnode.py): lvm1 10.NET.0.200."""
        return f"10.{self.net}.0.{199 + k}"

    def hosts_file(self):
        """/etc/hosts of every node: the names of all possible nodes."""
        return ("127.0.0.1 localhost\n"
                + "".join(f"{self.node_address(k)} node{k}\n" for k in range(1, 100))
                + "".join(f"{self.lvm_address(k)} lvm{k}\n" for k in range(1, MAX_LVM_NODES + 1)))

    def load(self):
        """The saved lab state (empty when the lab was never brought up)."""
        try:
            with open(self.state_file) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def save(self, state):
        """Persist the lab state."""
        write_file(self.state_file, json.dumps(state, indent=2, sort_keys=True) + "\n")

    @contextlib.contextmanager
    def lock(self):
        """Serialise commands that change this instance (up/down/mkserver)."""
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self.dir, ".lock"), "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

"""The engine's one door to a node's libvirt (after nova's Host/Guest).

Services never hold a raw virConnect or virDomain: they ask a `Host` where a
domain is, for its definition, to define or undefine it, for its job's
statistics, to steer or abort that job, to compare a CPU. libvirt's errors
become Ferry's, and the door keeps one distinction the engine's safety rests
on: a node that said "no such domain" (`DomainAbsent`) is not a node that did
not answer (`HostUnknown`). Acting on "did not answer" as if it meant "absent"
is how disks still in use get deleted.

Connections run with libvirt's event loop and keepalive (5 s x 3), so a call
on a node that died mid-migration returns an error within seconds instead of
hanging the worker.
"""
from __future__ import annotations

import logging
import os
import threading
import time

import libvirt

from app.errors import FerryError
from app.infra import libvirt as lv
from app.infra.bounded import within
from app.infra import migration as mig
from app.infra.migration import DomainPlace

KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3
OPEN_TIMEOUT_S = 30  # a daemon that takes the connection but never answers the open

# Codes that mean the node (or the link to it) failed, not that it refused: the outcome of
# the call is unknown, and the caller must ask again before acting on anything.
_NO_ANSWER = {
    libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN, libvirt.VIR_ERR_OPERATION_TIMEOUT,
    getattr(libvirt, "VIR_ERR_AUTH_UNAVAILABLE", -1),
}


class HostUnknown(FerryError):
    """The node did not answer: whatever was asked is neither done nor undone, as far as we know."""


class DomainAbsent(FerryError):
    """The node answered: it has no such domain."""


class HostRefused(FerryError):
    """The node answered and refused the call; nothing changed there."""


log = logging.getLogger("ferry.host")

_loop_lock = threading.Lock()
_loop_pid = None


_forbidden = {}  # pid -> why libvirt may not run in that process


def forbid_libvirt(reason: str) -> None:
    """No libvirt connection may be opened in this process (its children may open theirs).

    libvirt's event loop (GLib's main context) is owned by the thread that runs it; a child
    forked from a process that ran it cannot run its own, so keepalive never fires there and
    a call to a node that died hangs for good. The RQ worker forks a work horse per job:
    `python -m worker` forbids libvirt in itself, and its recovery passes run in children.
    """
    _forbidden[os.getpid()] = reason


def ensure_event_loop() -> None:
    """Register libvirt's default event loop once per process and run it in a daemon thread.

    Keepalive needs it. Only in a process that never forked from one that ran it (see
    forbid_libvirt).
    """
    global _loop_pid
    if os.getpid() in _forbidden:
        raise RuntimeError(f"libvirt may not run in this process: {_forbidden[os.getpid()]}")
    with _loop_lock:
        if _loop_pid == os.getpid():
            return
        if _loop_pid is not None:  # registered and run by the process this one forked from
            # Said loudly, once: calls work, but one to a node that dies would hang for good.
            # Ferry's worker never gets here (forbid_libvirt); a test's forking worker may.
            log.error("libvirt's event loop ran in process %s, which forked this one: keepalive "
                      "cannot work here (reach nodes only from processes that never ran it)",
                      _loop_pid)
            # Still run a loop thread here, as before: calls that wait on libvirt's events
            # (a migration's end) need one; only keepalive is lost.
            threading.Thread(target=_run_event_loop, name="libvirt-events", daemon=True).start()
            _loop_pid = os.getpid()
            return
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_run_event_loop, name="libvirt-events", daemon=True).start()
        _loop_pid = os.getpid()


def _run_event_loop() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


def _error(exc: libvirt.libvirtError, node: str, what: str) -> FerryError:
    """libvirt's error as Ferry's, naming the node and what was asked."""
    code = exc.get_error_code()
    message = f"{node}: {what}: {exc}"
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return DomainAbsent(message)
    if code in _NO_ANSWER or "connection" in str(exc).lower() or "keepalive" in str(exc).lower():
        return HostUnknown(message)
    return HostRefused(message)


def bounded_open(opener, name: str, timeout_s: float):
    """`opener()` (which opens a libvirt connection), given at most `timeout_s`.

    Keepalive only starts once a connection is open: a daemon that accepts the connection
    and never answers (one restarting after a SIGKILL, seen in the fault suite) would hold
    the caller for good. Past the limit the node counts as not answering (HostUnknown); a
    connection that opens later is closed by the thread that opened it.

    >>> bounded_open(lambda: "conn", "node1", 1)
    'conn'
    >>> import time
    >>> bounded_open(lambda: time.sleep(2), "node1", 0.1)
    Traceback (most recent call last):
    ...
    app.infra.host.HostUnknown: node1: libvirt did not answer within 0.1 s
    """
    ended, opened, error = within(opener, timeout_s, late=lambda conn: _close_late(conn, name),
                                  name=f"libvirt-open-{name}")
    if not ended:
        raise HostUnknown(f"{name}: libvirt did not answer within {timeout_s:g} s")
    if error is not None:
        raise error
    return opened


def _close_late(conn, name: str) -> None:
    """Close a connection that opened after its caller gave up on it."""
    if conn is None:
        return
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - a connection nobody uses any more
        log.warning("%s: closing a connection that opened too late failed", name)


class Host(lv.Host):
    """A libvirt connection to one node, with the calls the engine makes (plus the inventory's)."""

    @classmethod
    def open(cls, endpoint, known_hosts_dir, transport="libssh2") -> "Host":
        """Open the node's libvirt with the pinned host key and keepalive on."""
        ensure_event_loop()
        base = bounded_open(lambda: lv.open_host(endpoint, known_hosts_dir, transport),
                            f"{endpoint.host}:{endpoint.port}", OPEN_TIMEOUT_S)
        host = cls(base.conn, base.name)
        try:
            host.conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
        except libvirt.libvirtError:
            pass  # a node without keepalive support still works, only slower to notice death
        return host

    def _call(self, what: str, func, *args):
        try:
            return func(*args)
        except libvirt.libvirtError as exc:
            raise _error(exc, self.name, what) from exc

    def _domain(self, uuid: str):
        return self._call("look up the domain", self.conn.lookupByUUIDString, uuid)

    def place(self, uuid: str) -> DomainPlace:
        """Where the domain stands on this node; never raises: `error` is set when unknown."""
        place = mig.where_is(self.conn, uuid)
        if place.error:
            place.error = f"{self.name}: {place.error}"
        return place

    def xml(self, uuid: str, inactive: bool = False, migratable: bool = False) -> str:
        """The domain's definition: the running one, or the persistent one with inactive=True."""
        flags = (libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0) | (
            libvirt.VIR_DOMAIN_XML_MIGRATABLE if migratable else 0)
        return self._call("read the definition", self._domain(uuid).XMLDesc, flags)

    def define(self, xml: str) -> None:
        """Define a domain from its XML (persistent, not started)."""
        self._call("define the domain", self.conn.defineXML, xml)

    def undefine(self, uuid: str) -> None:
        """Remove a stopped domain's persistent definition, keeping its NVRAM and TPM state files
        (the engine removes those itself, once it knows the server lives elsewhere)."""
        flags = libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM | getattr(
            libvirt, "VIR_DOMAIN_UNDEFINE_KEEP_TPM", 0)
        dom = self._domain(uuid)
        self._call("undefine the domain", dom.undefineFlags, flags)

    def destroy(self, uuid: str) -> None:
        """Stop a running domain at once (a transient one disappears)."""
        self._call("stop the domain", self._domain(uuid).destroy)

    def suspend(self, uuid: str) -> None:
        """Pause a running domain's CPUs."""
        self._call("pause the domain", self._domain(uuid).suspend)

    def resume(self, uuid: str) -> None:
        """Let a paused domain run again."""
        self._call("resume the domain", self._domain(uuid).resume)

    def job_stats(self, uuid: str, completed: bool = False) -> dict:
        """The domain's current (or last completed) job statistics, {} when there is none."""
        flags = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED if completed else 0
        try:
            return self._domain(uuid).jobStats(flags) or {}
        except DomainAbsent:
            return {}
        except libvirt.libvirtError as exc:
            raise _error(exc, self.name, "read the job statistics") from exc

    def abort_job(self, uuid: str) -> None:
        """Ask libvirt to abort the domain's job (a migration: the guest stays on the source)."""
        self._call("abort the job", self._domain(uuid).abortJob)

    def set_max_downtime(self, uuid: str, ms: int) -> None:
        """Set the downtime QEMU may take at switch-over."""
        self._call("set the downtime", self._domain(uuid).migrateSetMaxDowntime, int(ms), 0)

    def start_postcopy(self, uuid: str) -> None:
        """Switch a running migration to post-copy (it must have been started allowing it)."""
        self._call("start post-copy", self._domain(uuid).migrateStartPostCopy, 0)

    def compare_cpu(self, cpu_xml: str) -> int:
        """libvirt's verdict on running a guest CPU here (VIR_CPU_COMPARE_*)."""
        return self._call("compare the CPU", self.conn.compareHypervisorCPU,
                          None, None, None, None, cpu_xml, 0)

    def migration(self, uuid: str, dest_uri: str, params: dict, flags: int,
                  control: "Host") -> mig.LiveMigration:
        """A peer-to-peer migration of the domain, not yet started; `control` (a second
        connection to this node) carries stats and steering while the call blocks."""
        return mig.LiveMigration(self._domain(uuid), dest_uri, params, flags,
                                 control=control._domain(uuid))


def settle_place(open_host, uuid: str, first: DomainPlace, wait_s: float, sleep) -> DomainPlace:
    """Ask again, on fresh connections, while a node does not answer; returns the last answer.

    `open_host()` opens a new Host (a context manager); `sleep` is injected for tests.
    """
    place, waited, started = first, 0.0, time.monotonic()
    # Both clocks bound it: the sleeps (injected in tests) and the wall time, which also counts
    # each attempt's own connection timeout (a node that does not answer costs seconds each).
    while place.error and waited < wait_s and time.monotonic() - started < wait_s:
        log.info("a node did not answer (%s); asking again on a fresh connection", place.error)
        sleep(2)
        waited += 2
        try:
            with open_host() as fresh:
                place = fresh.place(uuid)
        except FerryError as exc:
            place = DomainPlace(defined=False, running=False, error=str(exc))
    return place

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

import os
import threading

import libvirt

from app.errors import FerryError
from app.infra import libvirt as lv
from app.infra import migration as mig
from app.infra.migration import DomainPlace

KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3

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


_loop_lock = threading.Lock()
_loop_pid = None


def ensure_event_loop() -> None:
    """Register libvirt's default event loop once per process and run it in a daemon thread.

    Keepalive needs it; a forked RQ work horse gets a thread of its own (threads do not
    survive fork).
    """
    global _loop_pid
    with _loop_lock:
        if _loop_pid == os.getpid():
            return
        if _loop_pid is None:
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


class Host(lv.Host):
    """A libvirt connection to one node, with the calls the engine makes (plus the inventory's)."""

    @classmethod
    def open(cls, endpoint, known_hosts_dir, transport="libssh2") -> "Host":
        """Open the node's libvirt with the pinned host key and keepalive on."""
        ensure_event_loop()
        base = lv.open_host(endpoint, known_hosts_dir, transport)
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
    place, waited = first, 0.0
    while place.error and waited < wait_s:
        sleep(2)
        waited += 2
        try:
            with open_host() as fresh:
                place = fresh.place(uuid)
        except FerryError as exc:
            place = DomainPlace(defined=False, running=False, error=str(exc))
    return place

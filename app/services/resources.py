"""Compute resources: add one (pinning its SSH host key), test the connection, open SSH and libvirt.

Jobs and later services reach a node only through `open_ssh` and `open_libvirt`:

    with resources.open_ssh(resource) as conn:       # Fabric Connection, pinned key
        ssh.run(conn, node.KERNEL)
    with resources.open_libvirt(resource) as host:   # app.infra.libvirt.Host
        host.guests()

A preflight borrows both from the process's pool instead (`leased(Node.of(resource))`), so a
Check and the Start right after it do not log in twice.
"""
import atexit
import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from flask import current_app

from app import status
from app.errors import FerryError, NotFound
from app.extensions import db
from app.infra import ssh
from app.infra.commands import node
from app.infra.pool import Pool
from app.models import ComputeResource
from app.services import audit


def get(name_or_id):
    """The compute resource with this id or name, or NotFound."""
    query = db.select(ComputeResource)
    if isinstance(name_or_id, int) or str(name_or_id).isdigit():
        resource = db.session.get(ComputeResource, int(name_or_id))
        if resource is None:
            resource = db.session.scalar(query.filter_by(name=str(name_or_id)))
    else:
        resource = db.session.scalar(query.filter_by(name=name_or_id))
    if resource is None:
        raise NotFound(f"no compute resource {name_or_id!r}")
    return resource


def known_hosts_dir():
    """Where per-resource known_hosts files for libvirt are written (inside instance/)."""
    return os.path.join(current_app.instance_path, "known_hosts")


@contextlib.contextmanager
def open_ssh(resource):
    """A Fabric Connection to the resource that accepts only its pinned host key."""
    conn = ssh.connect(ssh.Endpoint.of(resource), timeout=current_app.config["SSH_TIMEOUT"])
    try:
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def open_libvirt(resource):
    """A libvirt Host for the resource over SSH, checked against the same pinned host key."""
    host = _open_host(ssh.Endpoint.of(resource), known_hosts_dir(),
                      current_app.config["LIBVIRT_TRANSPORT"])
    try:
        yield host
    finally:
        host.close()


def _open_host(endpoint, known_hosts, transport):
    """The node's libvirt door (app.infra.host.Host) with keepalive on, imported only by whoever
    opens a host: the CLI commands and pages that never reach a node start without libvirt.

    Keepalive matters most for pooled connections: one kept across a node's libvirtd restart
    otherwise blocked the next call (and a preflight with it) for good."""
    from app.infra.host import Host
    return Host.open(endpoint, known_hosts, transport)


@dataclass(frozen=True)
class Node:
    """How to reach a compute resource, read from its row once: threads that talk to nodes
    in parallel need neither the database session nor the app context."""

    id: int
    name: str
    endpoint: ssh.Endpoint  # holds the pinned host key: a re-pin makes another pool key
    backup_dir: str
    ssh_timeout: int
    known_hosts_dir: str
    transport: str

    @classmethod
    def of(cls, resource):
        """The Node of a ComputeResource row, with this app's settings."""
        return cls(resource.id, resource.name, ssh.Endpoint.of(resource), resource.backup_dir,
                   current_app.config["SSH_TIMEOUT"], known_hosts_dir(),
                   current_app.config["LIBVIRT_TRANSPORT"])

    @property
    def key(self):
        """The pool's key: everything that makes a connection to this node what it is."""
        return (self.endpoint, self.ssh_timeout, self.known_hosts_dir, self.transport)


@dataclass
class Connections:
    """One SSH (Fabric) and one libvirt connection to a node, lent together."""

    ssh: Any
    libvirt: Any  # app.infra.libvirt.Host


def _open_pair(key) -> Connections:
    """SSH and libvirt to one node, the two logins at once: libvirt's (C, in a thread of its
    own) while Fabric's runs here. A cold pair took 0.22 s one after the other on the lab and
    0.15 s together (two nodes at once, the preflight's case)."""
    endpoint, timeout, known_hosts, transport = key
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="open-libvirt") as pool:
        host = pool.submit(_open_host, endpoint, known_hosts, transport)
        try:
            conn = ssh.connect(endpoint, timeout=timeout)
        except BaseException:
            _close_quietly(host)
            raise
    try:
        return Connections(conn, host.result())
    except BaseException:
        conn.close()
        raise


def _close_quietly(opening) -> None:
    """Close what a parallel open made, once it is made (nothing if it failed)."""
    try:
        opening.result().close()
    except Exception:  # noqa: BLE001 - its failure is not the one to report
        pass


def _close_pair(pair: Connections) -> None:
    try:
        pair.libvirt.close()
    finally:
        pair.ssh.close()


def _pair_alive(pair: Connections) -> bool:
    """Both ends still answer: the SSH transport is up and libvirt replies to a cheap call."""
    try:
        transport = pair.ssh.client.get_transport()
        if transport is None or not transport.is_active():
            return False
        pair.libvirt.conn.getLibVersion()
        return True
    except Exception:  # noqa: BLE001 - any failure means: open a fresh one
        return False


POOL = Pool(_open_pair, _close_pair, _pair_alive)
atexit.register(POOL.clear)


def borrow(node: Node) -> Connections:
    """SSH and libvirt to the node from the process's pool (opened if none is idle); give
    them back with `give_back`, from any thread, once done."""
    return POOL.acquire(node.id, node.key)


def give_back(node: Node, pair: Connections, broken: bool = False) -> None:
    """Return borrowed connections; `broken` (anything went wrong on them) closes them."""
    POOL.release(node.id, node.key, pair, broken)


@contextlib.contextmanager
def leased(node: Node):
    """`with leased(node) as pair:` borrow and give back; closed instead if the block raised."""
    pair = borrow(node)
    try:
        yield pair
    except BaseException:
        give_back(node, pair, broken=True)
        raise
    give_back(node, pair)


def _validate(name, host, port, user, key_path):
    """Refuse a resource Ferry could never use, with a message that says why."""
    if not name or not name.strip():
        raise FerryError("a compute resource needs a name")
    if not host or not user:
        raise FerryError("a compute resource needs a host and a user")
    if not 0 < int(port) < 65536:
        raise FerryError(f"port {port} is not a TCP port")
    if not key_path or not os.path.isfile(key_path):
        raise FerryError(f"SSH key {key_path!r} is not a readable file on the Ferry machine")
    if db.session.scalar(db.select(ComputeResource).filter_by(name=name.strip())):
        raise FerryError(f"a compute resource named {name!r} already exists")


def add(name, host, user, key_path, port=22, *, backup_dir=None, storage_tags=(),
        expect_fingerprint=None, by=None):
    """Register a compute resource, pinning the host key it presents now (trust on first use).

    With `expect_fingerprint`, the key is pinned only if it matches what the operator expects.
    """
    port = int(port)
    _validate(name, host, port, user, key_path)
    host_key, fingerprint = ssh.fetch_host_key(host, port, current_app.config["SSH_TIMEOUT"])
    if expect_fingerprint and expect_fingerprint != fingerprint:
        raise ssh.HostKeyMismatch(f"{host}:{port} presented {fingerprint}, "
                                  f"not the expected {expect_fingerprint}: not added")
    resource = ComputeResource(
        name=name.strip(), host=host, port=port, user=user, key_path=os.path.abspath(key_path),
        host_key=host_key, host_key_fingerprint=fingerprint, status=status.RESOURCE_ACTIVE,
        backup_dir=backup_dir or current_app.config["BACKUP_DIR"],
        storage_tags=sorted(set(storage_tags or ())), facts={})
    db.session.add(resource)
    audit.record("resource.add", f"compute_resource:{resource.name}",
                 {"host": host, "port": port, "user": user, "host_key_fingerprint": fingerprint},
                 user=by)
    db.session.commit()
    return resource


def repin(resource_id, by=None):
    """Accept the key the node presents now (after a deliberate reinstall); audited."""
    resource = get(resource_id)
    old = resource.host_key_fingerprint
    resource.host_key, resource.host_key_fingerprint = ssh.fetch_host_key(
        resource.host, resource.port, current_app.config["SSH_TIMEOUT"])
    audit.record("resource.repin", f"compute_resource:{resource.name}",
                 {"old": old, "new": resource.host_key_fingerprint}, user=by)
    db.session.commit()
    return resource


def set_maintenance(resource_id, on, by=None):
    """Put a resource in maintenance (nothing is placed on it) or take it out."""
    resource = get(resource_id)
    resource.status = status.RESOURCE_MAINTENANCE if on else status.RESOURCE_ACTIVE
    resource.status_reason = None
    audit.record("resource.maintenance", f"compute_resource:{resource.name}", {"on": bool(on)}, user=by)
    db.session.commit()
    return resource


def mark_unreachable(resource, reason):
    """Record that the node could not be reached, and why (maintenance is kept as it is)."""
    if resource.status != status.RESOURCE_MAINTENANCE:
        resource.status = status.RESOURCE_UNREACHABLE
    resource.status_reason = reason


def mark_reachable(resource):
    """A node that answered is active again unless someone put it in maintenance."""
    if resource.status == status.RESOURCE_UNREACHABLE:
        resource.status = status.RESOURCE_ACTIVE
    if resource.status != status.RESOURCE_MAINTENANCE:
        resource.status_reason = None


def test_connection(resource_id):
    """Log in over SSH and open libvirt with the pinned key; returns what was seen or raises."""
    resource = get(resource_id)
    try:
        with open_ssh(resource) as conn:
            kernel = node.text_field(ssh.run(conn, node.KERNEL).stdout)
        with open_libvirt(resource) as host:
            versions = host.versions()
    except FerryError as exc:
        mark_unreachable(resource, str(exc))
        db.session.commit()
        raise
    mark_reachable(resource)
    db.session.commit()
    return {"kernel": kernel, **versions, "host_key_fingerprint": resource.host_key_fingerprint}

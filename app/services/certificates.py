"""Transfer TLS: Ferry's CA in the instance folder, node certificates installed over SSH,
and the decision whether a move's disk and memory streams use TLS.

Each node holds the same credentials twice: in TLS_NBD_DIR for qemu-nbd and
qemu-img (offline copies) and in TLS_MIGRATION_DIR, libvirt's
migrate_tls_x509_cert_dir (live migrations with VIR_MIGRATE_TLS). A
certificate is judged when it is installed and at every inventory sync; the
verdict is the `tls` entry of the resource's facts.
"""
from __future__ import annotations

import os

from flask import current_app

from app.errors import FerryError
from app.extensions import db
from app.infra import pki, ssh
from app.infra.commands import node
from app.services import audit, resources

CA_KEY_FILE = "ferry-ca-key.pem"
CA_CERT_FILE = "ferry-ca-cert.pem"


def _ca_path(name: str) -> str:
    return os.path.join(current_app.instance_path, name)


def _write_private(path: str, data: bytes) -> None:
    """Create a file readable by its owner only (never over an existing one)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def init_ca() -> str:
    """Create Ferry's CA in the instance folder (0600); refuse if one exists. Returns its path."""
    key_path, cert_path = _ca_path(CA_KEY_FILE), _ca_path(CA_CERT_FILE)
    if os.path.exists(key_path) or os.path.exists(cert_path):
        raise FerryError(f"a CA exists already in {current_app.instance_path}; node certificates "
                         "it signed would stop working if it were replaced")
    os.makedirs(current_app.instance_path, exist_ok=True)
    key_pem, cert_pem = pki.create_ca()
    _write_private(key_path, key_pem)
    _write_private(cert_path, cert_pem)
    return cert_path


def ca_certificate() -> bytes | None:
    """Ferry's CA certificate (PEM), or None before `pki init`."""
    try:
        with open(_ca_path(CA_CERT_FILE), "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _directories() -> tuple[str, str]:
    config = current_app.config
    return config["TLS_NBD_DIR"], config["TLS_MIGRATION_DIR"]


def issue(name_or_id) -> dict:
    """Issue a compute resource's certificate, install it over SSH (pinned host key) in both
    credential folders, and record the verdict in its facts. Issuing again rotates it."""
    resource = resources.get(name_or_id)
    ca_cert = ca_certificate()
    if ca_cert is None:
        raise FerryError("Ferry has no CA yet: run `flask --app wsgi pki init` first")
    with open(_ca_path(CA_KEY_FILE), "rb") as handle:
        ca_key = handle.read()
    files = pki.issue(ca_key, ca_cert, resource.name, resource.host)
    with resources.open_ssh(resource) as conn:
        for directory in _directories():
            # The keys go first and ca-cert last: a reader sees old or new, never a mix of CAs.
            for name in ("server-key.pem", "client-key.pem", "server-cert.pem",
                         "client-cert.pem", "ca-cert.pem"):
                done = ssh.run(conn, node.install_credential(directory, name),
                               stdin=files[name].decode())
                if not done.ok:
                    raise FerryError(f"{resource.name}: cannot write {directory}/{name}: "
                                     f"{done.stderr.strip()[:300]}")
        verdict = gather(resource, conn)
    facts = dict(resource.facts or {})
    facts["tls"] = verdict
    resource.facts = facts
    audit.record("pki.issue", target=resource.name, detail=verdict)
    db.session.commit()
    return verdict


def fact_commands() -> list[list[str]]:
    """The commands `gather` may run on a node (read ahead with the other facts)."""
    return [node.read_certificate(directory) for directory in _directories()]


def gather(resource, conn) -> dict:
    """The `tls` fact: are valid Ferry certificates installed in both folders of the node?

    `resource` is a ComputeResource or the pool's Node of one (preflight gathers through it).
    """
    endpoint = getattr(resource, "endpoint", None)
    address = endpoint.host if endpoint is not None else resource.host
    ca_cert = ca_certificate()
    if ca_cert is None:
        return pki.Verdict(False, "Ferry has no CA (flask --app wsgi pki init)").as_fact()
    verdicts = []
    for directory in _directories():
        read = ssh.run(conn, node.read_certificate(directory))
        if not read.ok:
            reason = (read.stderr.strip().splitlines() or ["unreadable"])[-1][:120]
            return pki.Verdict(False, f"{directory}: {reason}").as_fact()
        verdict = pki.judge(read.stdout[:65536], ca_cert, address)
        if not verdict.valid:
            return pki.Verdict(False, f"{directory}: {verdict.reason}", verdict.not_after).as_fact()
        verdicts.append(verdict)
    return min(verdicts, key=lambda v: v.not_after or "").as_fact()


def has_valid_certificate(resource) -> bool:
    """True when the last sync (or issue) found valid certificates on the node."""
    return bool(((resource.facts or {}).get("tls") or {}).get("valid"))


def use_tls(setting: str, source_valid: bool, destination_valid: bool) -> bool:
    """Pure: whether a move between two nodes uses TLS, under FERRY_TRANSFER_SECURITY.

    >>> use_tls("auto", True, True), use_tls("auto", True, False), use_tls("plain", True, True)
    (True, False, False)
    >>> use_tls("tls", False, False)  # required: the move fails rather than go in clear
    True
    """
    if setting == "plain":
        return False
    if setting == "tls":
        return True
    return source_valid and destination_valid


def tls_for(source, destination) -> bool:
    """Whether a move from source to destination uses TLS under this site's setting."""
    return use_tls(current_app.config["TRANSFER_SECURITY"], has_valid_certificate(source),
                   has_valid_certificate(destination))


def nbd_dir() -> str:
    """The folder of qemu-nbd's and qemu-img's credentials on every node."""
    return current_app.config["TLS_NBD_DIR"]

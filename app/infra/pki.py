"""Ferry's small certificate authority: make the CA, issue a node's certificates, judge them.

Pure functions over PEM bytes (the `cryptography` package); no file or node I/O.
A node gets one key pair and one certificate that serves as both QEMU's TLS
server certificate (qemu-nbd, the destination of a live migration) and its
client certificate (qemu-img reading an export, the source of a migration):
QEMU's x509 credentials check the extended key usage, so the certificate
carries both serverAuth and clientAuth. The node's address is its IP SAN (QEMU
checks the name it connected to against it) and its name a DNS SAN.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
NODE_DAYS = 825
# The files QEMU and libvirt look for in a credentials directory.
FILES = ("ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem", "client-key.pem")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def create_ca(common_name: str = "Ferry transfer CA", now: dt.datetime | None = None) -> tuple[bytes, bytes]:
    """Return (key PEM, certificate PEM) of a new self-signed CA."""
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


def issue(ca_key_pem: bytes, ca_cert_pem: bytes, name: str, address: str,
          now: dt.datetime | None = None) -> dict[str, bytes]:
    """Return the five credential files of a node, by file name (see FILES)."""
    now = now or _now()
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName(name)]
    try:
        sans.insert(0, x509.IPAddress(ipaddress.ip_address(address)))
    except ValueError:
        sans.append(x509.DNSName(address))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=NODE_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, True, False, True, False, False, False, False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_pem, key_pem = cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)
    return {"ca-cert.pem": ca_cert_pem, "server-cert.pem": cert_pem, "server-key.pem": key_pem,
            "client-cert.pem": cert_pem, "client-key.pem": key_pem}


@dataclass(frozen=True)
class Verdict:
    """Whether a node's installed certificate is one Ferry can use."""

    valid: bool
    reason: str
    not_after: str | None = None

    def as_fact(self) -> dict:
        """The shape kept in a compute resource's facts."""
        return {"valid": self.valid, "reason": self.reason, "not_after": self.not_after}


def judge(cert_pem: bytes | str, ca_cert_pem: bytes, address: str,
          now: dt.datetime | None = None) -> Verdict:
    """Judge a certificate read from a node (untrusted text) against Ferry's CA and the node's address.

    >>> judge("not a certificate", b"", "10.0.0.1").reason
    'no readable certificate'
    """
    now = now or _now()
    raw = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    try:
        cert = x509.load_pem_x509_certificate(raw)
    except (ValueError, TypeError):
        return Verdict(False, "no readable certificate")
    not_after = cert.not_valid_after_utc.isoformat()
    try:
        ca = x509.load_pem_x509_certificate(ca_cert_pem)
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return Verdict(False, "not signed by Ferry's CA", not_after)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        return Verdict(False, f"expired or not yet valid (until {not_after})", not_after)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return Verdict(False, "no subject alternative name", not_after)
    try:
        wanted = ipaddress.ip_address(address)
        names = sans.get_values_for_type(x509.IPAddress)
    except ValueError:
        wanted, names = address, sans.get_values_for_type(x509.DNSName)
    if wanted not in names:
        return Verdict(False, f"not issued for {address}", not_after)
    return Verdict(True, f"valid until {not_after[:10]}", not_after)

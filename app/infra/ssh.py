"""SSH to compute resources with Fabric, always against the pinned host key.

Fabric loads no known_hosts and trusts any key by default (AutoAddPolicy); Ferry
instead puts the one pinned key into paramiko and refuses anything else.

paramiko and Fabric are imported by the functions that use them: together they cost about a
quarter of a second, which every CLI command and web worker start would pay for nothing.
"""
import base64
import functools
import hashlib
import io
import shlex
import socket
from dataclasses import dataclass

from app.errors import FerryError


class SSHError(FerryError):
    """The node could not be reached or refused the login."""


class HostKeyMismatch(SSHError):
    """The node presented a host key other than the pinned one: possibly not the same machine."""


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to log in, and the key the node must present ("type base64")."""

    host: str
    port: int
    user: str
    key_path: str
    host_key: str | None = None

    @classmethod
    def of(cls, resource):
        """The endpoint of a ComputeResource row."""
        return cls(resource.host, resource.port, resource.user, resource.key_path, resource.host_key)

    @property
    def known_hosts_name(self):
        """The host's name as OpenSSH writes it in known_hosts."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def fingerprint(key):
    """OpenSSH's SHA256 fingerprint of a paramiko key or a "type base64" string."""
    blob = _key_blob(key) if isinstance(key, str) else key.asbytes()
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _key_blob(host_key):
    """The key bytes of "type base64[ comment]"; SSHError on anything else (a node may send it)."""
    parts = host_key.split() if isinstance(host_key, str) else []
    try:
        if len(parts) < 2:
            raise ValueError("expected 'type base64'")
        return base64.b64decode(parts[1], validate=True)
    except ValueError as exc:  # binascii.Error is a ValueError
        raise SSHError(f"not an SSH host key: {str(host_key)[:80]!r} ({exc})") from exc


def _pkey(host_key):
    """A paramiko key from "type base64"."""
    import paramiko
    blob = _key_blob(host_key)
    try:
        return paramiko.PKey.from_type_string(host_key.split()[0], blob)
    except (paramiko.SSHException, paramiko.pkey.UnknownKeyType, ValueError, TypeError) as exc:
        raise SSHError(f"not an SSH host key: {host_key[:80]!r} ({exc})") from exc


def fetch_host_key(host, port, timeout=10):
    """Ask the node for its host key without logging in: returns ("type base64", fingerprint)."""
    import paramiko
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise SSHError(f"cannot reach {host}:{port}: {exc}") from exc
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise SSHError(f"no SSH service answered on {host}:{port}: {exc}") from exc
    finally:
        transport.close()
        sock.close()
    return f"{key.get_name()} {key.get_base64()}", fingerprint(key)


def connect(endpoint, timeout=10):
    """An open Fabric Connection that accepts only the pinned host key; the caller closes it."""
    import paramiko
    from fabric import Connection
    if not endpoint.host_key:
        raise SSHError(f"no host key is pinned for {endpoint.host}: add the compute resource first")
    conn = Connection(endpoint.host, user=endpoint.user, port=endpoint.port,
                      connect_timeout=timeout,
                      connect_kwargs={"key_filename": endpoint.key_path,
                                      "allow_agent": False, "look_for_keys": False,
                                      "banner_timeout": timeout, "auth_timeout": timeout})
    conn.config.runners.remote = _feeding_runner()
    client = conn.client
    client.get_host_keys().add(endpoint.known_hosts_name, endpoint.host_key.split()[0],
                               _pkey(endpoint.host_key))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        conn.open()
    except paramiko.BadHostKeyException as exc:
        conn.close()
        raise HostKeyMismatch(
            f"{endpoint.host}:{endpoint.port} presented host key {fingerprint(exc.key)}, "
            f"but {fingerprint(endpoint.host_key)} is pinned: refusing to connect. "
            "If the node was reinstalled, re-pin its key deliberately.") from exc
    except paramiko.SSHException as exc:
        conn.close()
        if "not found in known_hosts" in str(exc):
            # The node offered only key types other than the pinned one.
            raise HostKeyMismatch(f"{endpoint.host}:{endpoint.port} did not present the pinned "
                                  f"key {fingerprint(endpoint.host_key)}: refusing to connect") from exc
        raise SSHError(f"SSH to {endpoint.user}@{endpoint.host}:{endpoint.port} failed: {exc}") from exc
    except (OSError, EOFError) as exc:
        conn.close()
        raise SSHError(f"cannot reach {endpoint.host}:{endpoint.port}: {exc}") from exc
    return conn


STDIN_PIECE = 64 * 1024


@functools.cache
def _feeding_runner():
    """Fabric's remote runner, reading a given stdin in pieces of STDIN_PIECE characters.

    invoke reads a stream that is not a terminal one character per loop, and sleeps 10 ms
    between loops: a 600-byte certificate took 6 s to send, the peer wrapper every live move
    installs as long, and a 128 KiB NVRAM file (175 KB as base64) would need half an hour,
    far past the command's timeout."""
    from fabric.runners import Remote

    class Feeding(Remote):
        def read_our_stdin(self, input_):
            return input_.read(STDIN_PIECE)

    return Feeding


@dataclass(frozen=True)
class CommandResult:
    """What a command printed and how it ended."""

    argv: tuple
    exited: int
    stdout: str
    stderr: str

    @property
    def ok(self):
        """True when the command exited 0."""
        return self.exited == 0


def run(conn, argv, timeout=60, stdin: str | None = None):
    """Run an argument list on the node; each argument is quoted, so nothing is interpreted.

    `stdin`, when given, is fed to the command (small payloads: NVRAM, TPM state)."""
    line = shlex.join(argv)
    stream = io.StringIO(stdin) if stdin is not None else False
    try:
        result = conn.run(line, hide=True, warn=True, timeout=timeout, in_stream=stream)
    except Exception as exc:  # invoke's CommandTimedOut, socket errors
        raise SSHError(f"{line!r} on {conn.host} did not complete: {exc}") from exc
    return CommandResult(tuple(argv), result.exited, result.stdout, result.stderr)


class ReadAhead:
    """A connection whose answers to some commands were read ahead, in one round trip:
    `run` (what ssh.run calls) gives those back by command line and runs any other command on
    the node as usual; everything else is the connection's."""

    def __init__(self, conn, answers: dict[str, CommandResult]):
        self._conn, self._answers = conn, answers

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def run(self, line, **kwargs):
        """The answer read ahead for `line`, else the node's."""
        if line in self._answers:
            return self._answers[line]
        return self._conn.run(line, **kwargs)

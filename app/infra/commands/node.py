"""Inventory commands for a compute node, as argument lists, and parsers for what they print.

No server name or other user-supplied string is ever part of these commands;
where a path from the database is needed it is a separate, quoted argument.
What a node prints is untrusted: the parsers bound and clean it, never assume it.
"""
import re

OS_RELEASE = ["cat", "/etc/os-release"]
CPUINFO = ["cat", "/proc/cpuinfo"]
KERNEL = ["uname", "-r"]
NESTED = ["cat", "/sys/module/kvm_intel/parameters/nested", "/sys/module/kvm_amd/parameters/nested"]
NBD_LOADED = ["test", "-d", "/sys/module/nbd"]
NBD_AVAILABLE = ["modinfo", "-n", "nbd"]
TRUE = ["true"]

_FIELD_LIMIT = 256  # a node's text kept in facts: no real value is longer
_DF_NUMBER = re.compile(r"^[0-9]{1,20}$")


def text_field(value):
    """A value a node printed, as kept in facts: printable, at most 256 characters, or None.

    >>> text_field("  6.1.0-18-amd64\\n"), text_field("\\x00\\x1b"), text_field("")
    ('6.1.0-18-amd64', None, None)
    """
    if value is None:
        return None
    kept = "".join(c for c in str(value) if c.isprintable()).strip()[:_FIELD_LIMIT]
    return kept or None


def free_space(path):
    """`df` of `path` in bytes (path is an argument, never shell text)."""
    return ["df", "-P", "-B1", "--", path]


def parse_os_release(text):
    """The fields of /etc/os-release Ferry uses.

    >>> parse_os_release('ID=debian\\nVERSION_ID="12"\\nNAME="Debian GNU/Linux"\\n')["version_id"]
    '12'
    """
    values = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip('"').strip("'")
    return {"id": text_field(values.get("ID")), "version_id": text_field(values.get("VERSION_ID")),
            "name": text_field(values.get("NAME")),
            "pretty_name": text_field(values.get("PRETTY_NAME"))}


def parse_cpuinfo(text):
    """vendor, family, model, model name and flags of the first processor in /proc/cpuinfo.

    >>> parse_cpuinfo("vendor_id : GenuineIntel\\ncpu family : 6\\nflags : fpu vmx\\n")["flags"]
    ['fpu', 'vmx']
    """
    first = {}
    for line in text.splitlines():
        if not line.strip():
            if first:
                break
            continue
        key, _, value = line.partition(":")
        first.setdefault(key.strip(), value.strip())
    flags = [f for f in (text_field(first.get("flags")) or "").split() if len(f) <= 64]
    return {"vendor_id": text_field(first.get("vendor_id")),
            "family": text_field(first.get("cpu family")),
            "model": text_field(first.get("model")), "model_name": text_field(first.get("model name")),
            "flags": flags}


def parse_nested(text):
    """kvm_intel/kvm_amd `nested` parameter: "Y" or "1" means on.

    >>> parse_nested("Y\\n"), parse_nested("")
    (True, False)
    """
    return any(v.strip() in ("Y", "1") for v in text.splitlines())


def parse_df(text):
    """Available bytes from `df -P -B1` output, or None.

    >>> parse_df("Filesystem 1-blocks Used Available Capacity Mounted on\\n/dev/x 100 40 60 40% /\\n")
    60
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return None
    fields = lines[-1].split()
    if len(fields) < 4 or not _DF_NUMBER.match(fields[3]):
        return None  # df printed something else: room unknown
    return int(fields[3])


# ---------------------------------------------------------------- transfer TLS credentials

def install_credential(directory: str, file_name: str) -> list[str]:
    """Write stdin (one PEM) as DIRECTORY/FILE_NAME, mode 0600 (0700 folder), replacing it
    atomically so a running transfer never reads half a key.

    >>> install_credential("/etc/pki/qemu", "server-key.pem")[-2:]
    ['/etc/pki/qemu', 'server-key.pem']
    """
    if file_name not in ("ca-cert.pem", "server-cert.pem", "server-key.pem",
                         "client-cert.pem", "client-key.pem"):
        raise ValueError(f"not a credentials file: {file_name!r}")
    if not directory.startswith("/") or "\0" in directory:
        raise ValueError(f"not an absolute path: {directory!r}")
    return ["sh", "-c",
            'umask 077 && mkdir -p -- "$1" && cat > "$1/.$2.new" && mv -f -- "$1/.$2.new" "$1/$2"',
            "ferry-pki", directory, file_name]


def read_certificate(directory: str) -> list[str]:
    """Print the node's server certificate in `directory` (exit 1 when it or a key is missing)."""
    if not directory.startswith("/") or "\0" in directory:
        raise ValueError(f"not an absolute path: {directory!r}")
    return ["sh", "-c",
            'for f in ca-cert.pem server-key.pem client-cert.pem client-key.pem; do'
            ' [ -s "$1/$f" ] || { echo "missing $f" >&2; exit 1; }; done; exec cat -- "$1/server-cert.pem"',
            "ferry-pki", directory]

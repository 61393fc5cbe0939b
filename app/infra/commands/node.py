"""Inventory commands for a compute node, as argument lists, and parsers for what they print.

No server name or other user-supplied string is ever part of these commands;
where a path from the database is needed it is a separate, quoted argument.
"""

OS_RELEASE = ["cat", "/etc/os-release"]
CPUINFO = ["cat", "/proc/cpuinfo"]
KERNEL = ["uname", "-r"]
NESTED = ["cat", "/sys/module/kvm_intel/parameters/nested", "/sys/module/kvm_amd/parameters/nested"]
NBD_LOADED = ["test", "-d", "/sys/module/nbd"]
NBD_AVAILABLE = ["modinfo", "-n", "nbd"]
TRUE = ["true"]


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
    return {"id": values.get("ID"), "version_id": values.get("VERSION_ID"),
            "name": values.get("NAME"), "pretty_name": values.get("PRETTY_NAME")}


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
    return {"vendor_id": first.get("vendor_id"), "family": first.get("cpu family"),
            "model": first.get("model"), "model_name": first.get("model name"),
            "flags": first.get("flags", "").split()}


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
    try:
        return int(lines[-1].split()[3])
    except (IndexError, ValueError):
        return None


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

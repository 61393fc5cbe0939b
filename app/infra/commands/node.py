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

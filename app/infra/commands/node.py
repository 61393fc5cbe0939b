"""Inventory commands for a compute node, as argument lists, and parsers for what they print.

No server name or other user-supplied string is ever part of these commands;
where a path from the database is needed it is a separate, quoted argument.
What a node prints is untrusted: the parsers bound and clean it, never assume it.
"""
import base64
import binascii
import re
import shlex

from app.errors import UnexpectedAnswer

OS_RELEASE = ["cat", "/etc/os-release"]
CPUINFO = ["cat", "/proc/cpuinfo"]
KERNEL = ["uname", "-r"]
NESTED = ["cat", "/sys/module/kvm_intel/parameters/nested", "/sys/module/kvm_amd/parameters/nested"]
NBD_LOADED = ["test", "-d", "/sys/module/nbd"]
NBD_AVAILABLE = ["modinfo", "-n", "nbd"]
TRUE = ["true"]

_FIELD_LIMIT = 256  # a node's text kept in facts: no real value is longer
_DF_NUMBER = re.compile(r"^[0-9]{1,20}$")
_DF_CAPACITY = re.compile(r"^([0-9]{1,3}%|-)$")
MAX_BACKUP_FILES = 1000  # files of a backup directory read per sync; more are cut, and said so
_BACKUP_RECORD = re.compile(r"^([0-9]{1,20})\t([^\x00]{1,4096})$", re.S)


class UnexpectedListing(UnexpectedAnswer):
    """A node's backup directory listing is not of the shape its command prints."""


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


def list_backup_files(directory):
    """Size and path (relative to `directory`) of every file up to one folder deep in the backup
    directory, one NUL-terminated "SIZE<TAB>PATH" record each, at most MAX_BACKUP_FILES + 1
    records (so a cut listing is told from a full one); nothing when the directory is absent.

    >>> list_backup_files("/var/lib/ferry/backups")[-1]
    '/var/lib/ferry/backups'
    """
    if not isinstance(directory, str) or not directory.startswith("/") or "\0" in directory:
        raise ValueError(f"not an absolute path: {directory!r}")
    return ["sh", "-c",
            '[ -d "$1" ] || exit 0; find "$1" -mindepth 1 -maxdepth 2 -type f'
            f' -printf "%s\\t%P\\0" | head -z -n {MAX_BACKUP_FILES + 1}',
            "ferry-backups", directory]


def parse_backup_files(text):
    """(files, cut) from list_backup_files' output: files as {"name", "size"} (name relative to the
    directory), cut when the node had more than MAX_BACKUP_FILES. A record of any other shape
    raises UnexpectedListing; a name that is not printable text, or climbs out of the directory,
    is left out (it cannot be named after a server).

    >>> parse_backup_files("1048576\\tweb1.qcow2\\x0042\\tweb2/inc-1.qcow2\\x00")
    ([{'name': 'web1.qcow2', 'size': 1048576}, {'name': 'web2/inc-1.qcow2', 'size': 42}], False)
    >>> parse_backup_files("")
    ([], False)
    """
    if not isinstance(text, str):
        raise UnexpectedListing("the backup directory listing is not text")
    if not text:
        return [], False
    if not text.endswith("\0"):
        raise UnexpectedListing(f"the backup directory listing is cut mid-record: {text[-80:]!r}")
    records = text[:-1].split("\0")
    if len(records) > MAX_BACKUP_FILES + 1:
        raise UnexpectedListing(f"the backup directory listing has {len(records)} records, more"
                                f" than the {MAX_BACKUP_FILES + 1} asked for")
    files = []
    for record in records[:MAX_BACKUP_FILES]:
        match = _BACKUP_RECORD.match(record)
        if not match:
            raise UnexpectedListing(
                f"a backup directory record is not SIZE<TAB>PATH: {record[:80]!r}")
        name = match.group(2)
        parts = name.split("/")
        if name.isprintable() and "" not in parts and ".." not in parts and "." not in parts:
            files.append({"name": name, "size": int(match.group(1))})
    return files, len(records) > MAX_BACKUP_FILES


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
    """Available bytes from `df -P -B1 -- PATH` output (its header, then one line: filesystem,
    size, used, available, capacity, mount point), or None when it printed anything else.

    >>> parse_df("Filesystem 1-blocks Used Available Capacity Mounted on\\n/dev/x 100 40 60 40% /\\n")
    60
    >>> parse_df("/dev/x 100 40 60 40% /\\n")  # no header
    >>> parse_df("Filesystem 1-blocks\\n/dev/x 1 2 x 4% /\\n")  # not a number
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 2 or not lines[0].split()[0] == "Filesystem":
        return None  # df printed something else: room unknown
    fields = lines[1].split()
    if len(fields) < 6 or not all(_DF_NUMBER.match(f) for f in fields[1:4]) \
            or not _DF_CAPACITY.match(fields[4]) or not fields[5].startswith("/"):
        return None
    return int(fields[3])


# ---------------------------------------------------------------- a guest's resident memory

_RESIDENT_LINE = re.compile(r"^([0-9]{1,12}) ([0-9]{1,12})$")
_MAX_MAPPINGS = 64  # mappings of a guest's size in one QEMU: more is not an answer


def domain_name_ok(name) -> bool:
    """Whether `name` is one libvirt could have given a domain (and a pid file): a non-empty
    text without "/" or NUL, not "." or "..".

    >>> domain_name_ok("web 1"), domain_name_ok("x/y"), domain_name_ok("..")
    (True, False, False)
    """
    return (isinstance(name, str) and bool(name) and "/" not in name and "\0" not in name
            and name not in (".", ".."))


def guest_resident(name: str, memory_kib: int, seconds: float = 10.0) -> list[str]:
    """The size and resident KiB (hugetlb pages included) of every mapping of exactly the
    guest's memory size in the QEMU process running domain `name` (libvirt's pid file): the
    guest's RAM, whose resident part is what the guest ever touched. QEMU sends untouched
    pages as zero pages, a few bytes each, so this bounds what the first pass sends in full.
    The name is an argument, never shell text; libvirt refuses names with a "/".

    Reading a mapping walks its page tables, at most `seconds` (it shares the facts' exec):
    a 16 GiB mapping with 4 GiB touched took 44 ms in 4 KiB pages, 7 ms in transparent huge
    pages (which QEMU asks for).

    >>> argv = guest_resident("web 1", 262144, 0.5)
    >>> argv[:2], argv[3:]
    (['sh', '-c'], ['ferry-resident', '0.5', 'web 1', '262144'])
    """
    if (not domain_name_ok(name) or not isinstance(memory_kib, int) or memory_kib <= 0
            or not isinstance(seconds, (int, float)) or not 0 < seconds <= 3600):
        raise ValueError(f"not a domain name, memory size and time limit: {name!r}, "
                         f"{memory_kib!r}, {seconds!r}")
    script = (
        'pid=$(cat -- "/run/libvirt/qemu/$2.pid") || exit 3\n'
        'case $pid in ""|*[!0-9]*) exit 3;; esac\n'
        'exec timeout "$1" awk -v want="$3" \''
        '/^[0-9a-f]+-[0-9a-f]+ / { if (hit) print size, rss; hit = 0; rss = 0 } '
        '/^Size:/ { size = $2; hit = ($2 == want) } '
        '/^(Rss|Shared_Hugetlb|Private_Hugetlb):/ { rss += $2 } '
        'END { if (hit) print size, rss }\' "/proc/$pid/smaps"')
    return ["sh", "-c", script, "ferry-resident", f"{seconds:g}", name, str(memory_kib)]


def parse_resident(text, memory_kib: int) -> int | None:
    """The bytes of the guest's memory that are resident, from guest_resident's output, or None
    when it does not tell (no mapping of the guest's size, or several, or another shape).

    >>> parse_resident("262144 126976\\n", 262144)
    130023424
    >>> parse_resident("", 262144), parse_resident("262144 1\\n262144 2\\n", 262144)
    (None, None)
    >>> parse_resident("262144 999999999\\n", 262144)  # more than the guest has: all of it
    268435456
    """
    lines = text.split("\n") if isinstance(text, str) else []
    if lines and lines[-1] == "":
        lines.pop()
    found = [_RESIDENT_LINE.match(line) for line in lines[:_MAX_MAPPINGS + 1]]
    if len(found) != 1 or not found[0] or int(found[0].group(1)) != memory_kib:
        return None
    return min(int(found[0].group(2)), memory_kib) * 1024


# ---------------------------------------------------------------- several commands, one exec

_BATCH_LINE = re.compile(r"^(\d{1,4}) (\d{1,3}) ([A-Za-z0-9+/=]*) ([A-Za-z0-9+/=]*)$")


def batch(argvs) -> list[str]:
    """Run each argument list in turn in one shell (each quoted, so nothing is interpreted, and
    each reading nothing), printing one line per command: its index, exit status, and its
    stdout and stderr in base64. Each command is an exec of its own over SSH otherwise, about
    50 ms on a node; the facts are a dozen of them.

    >>> argv = batch([["uname", "-r"], ["df", "-P", "-B1", "--", "/var/lib/ferry backups"]])
    >>> argv[:2], argv[3:]
    (['sh', '-c'], ['ferry-batch'])
    >>> "df -P -B1 -- '/var/lib/ferry backups' >" in argv[2]
    True
    """
    script = ['d=$(mktemp -d) || exit 97', 'trap \'rm -rf -- "$d"\' EXIT']
    for index, argv in enumerate(argvs):
        script.append(f'{shlex.join(argv)} >"$d/o" 2>"$d/e" </dev/null; r=$?; '
                      f'printf "{index} %s %s %s\\n" "$r" "$(base64 -w0 <"$d/o")" '
                      '"$(base64 -w0 <"$d/e")"')
    return ["sh", "-c", "\n".join(script), "ferry-batch"]


def parse_batch(text, count: int) -> list[tuple[int, str, str]]:
    """(exit status, stdout, stderr) of each of the `count` commands from `batch`'s output;
    UnexpectedAnswer when it is of any other shape.

    >>> parse_batch("0 0 NS4xCg== \\n1 1  bm8K\\n", 2)
    [(0, '5.1\\n', ''), (1, '', 'no\\n')]
    >>> parse_batch("0 0 NS4xCg== \\n", 2)
    Traceback (most recent call last):
    ...
    app.errors.UnexpectedAnswer: a batch of 2 commands printed 1 answers
    """
    lines = text.split("\n") if isinstance(text, str) else []
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != count:
        raise UnexpectedAnswer(f"a batch of {count} commands printed {len(lines)} answers")
    answers = []
    for index, line in enumerate(lines):
        match = _BATCH_LINE.match(line)
        if not match or int(match.group(1)) != index:
            raise UnexpectedAnswer(f"answer {index} of a batch is not INDEX EXIT OUT ERR: "
                                   f"{line[:80]!r}")
        try:
            out, err = (base64.b64decode(match.group(g), validate=True) for g in (3, 4))
        except binascii.Error as exc:
            raise UnexpectedAnswer(f"answer {index} of a batch is not base64: {exc}") from exc
        answers.append((int(match.group(2)), out.decode("utf-8", "replace"),
                        err.decode("utf-8", "replace")))
    return answers


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

"""Property-based fuzzing of every parser of what a compute node sends back (issue #11).

A compromised hypervisor controls its domain XML, `qemu-img info` JSON, lvs/vgs
reports, /proc and /etc text, df, dd and qemu-img progress lines, socat errors,
host keys and certificates. Each parser gets generated input (random text,
mutated real samples, deep and huge XML, JSON of the wrong types) and must
either return a well-formed value or raise a FerryError, never anything else.

FERRY_FUZZ_EXAMPLES sets the examples per parser: 200 by default (`make test`),
10000 in `make faults`.
"""
import json
import math
import os
import re
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from app import status
from app.errors import FerryError
from app.extensions import db
from app.infra import libvirt as lv
from app.infra import migration, pki, ssh
from app.infra.commands import lvm, node, storage
from app.models import ComputeResource, Disk, Server
from app.services import disks, inventory, live, resources
from tests.fakes import domain_xml

EXAMPLES = int(os.environ.get("FERRY_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
                suppress_health_check=list(HealthCheck))

DOMAIN = domain_xml("6f1c0a52-3c1e-4f3e-9d6a-0a0b0c0d0e0f", "web",
                    [("vda", "/var/lib/libvirt/images/web.qcow2", "qcow2"),
                     ("vdb", "/dev/ferry/data", "raw", "block")])
CAPABILITIES = ("<capabilities><host><cpu><arch>x86_64</arch><model>Skylake-Client-IBRS</model>"
                "<vendor>Intel</vendor><feature name='vmx'/><feature name='pcid'/></cpu></host>"
                "</capabilities>")
POOL = "<pool type='dir'><name>default</name><target><path>/var/lib/libvirt/images</path></target></pool>"
IMAGE_INFO = json.dumps({"virtual-size": 1 << 30, "filename": "/img/web.qcow2", "format": "qcow2",
                         "actual-size": 200704, "dirty-flag": False})
LVM_REPORT = (json.dumps({"report": [{"vg": [{"vg_name": "ferry", "vg_size": "8589934592",
                                               "vg_free": "4294967296"}]}]})
              + f"\n{lvm.SEPARATOR}\n"
              + json.dumps({"report": [{"lv": [{
                  "vg_name": "ferry", "lv_name": "thick-web", "lv_path": "/dev/ferry/thick-web",
                  "lv_dm_path": "/dev/mapper/ferry-thick-web", "segtype": "linear", "pool_lv": "",
                  "lv_size": "1073741824", "data_percent": "", "metadata_percent": ""}]}]}))
OS_RELEASE = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n'
CPUINFO = ("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\n"
           "model name\t: Intel Xeon\nflags\t\t: fpu vme vmx avx2\n\nprocessor\t: 1\n")
DF = "Filesystem 1-blocks Used Available Capacity Mounted on\n/dev/sda1 100 40 60 40% /\n"
BACKUP_FILES = "1073741824\tweb.qcow2\x00524288\tweb/inc-2.qcow2\x00"
DD = "256+0 records in\n256+0 records out\n268435456 bytes (268 MB, 256 MiB) copied, 0.5 s, 537 MB/s\n"
PROGRESS = "    (0.00/100%)\r    (42.50/100%)\r    (100.00/100%)\r"
SOCAT = "2026/01/01 socat[1] E connect(5, AF=2 10.0.0.2:49152, 16): Connection refused\n"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHs9vQ0E2x3p8tqHkq3d1bqzqjvW1V8jJ3t1QeX1s9cT"


def mutated(sample):
    """A real sample with a slice cut, duplicated or replaced by random text."""
    return st.tuples(st.integers(0, len(sample)), st.integers(0, len(sample)), st.text(max_size=40),
                     st.sampled_from(["cut", "insert", "double"])).map(
        lambda t: {"cut": sample[:min(t[:2])] + sample[max(t[:2]):],
                   "insert": sample[:t[0]] + t[2] + sample[t[0]:],
                   "double": sample[:t[1]] + sample[min(t[:2]):]}[t[3]])


def deep_xml(depth):
    """XML nested `depth` levels inside a domain's devices."""
    return "<domain><devices>" + "<disk device='disk'>" * depth + "</disk>" * depth + "</devices></domain>"


ENTITY_BOMB = ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
               + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8))
               + ']><domain><name>&i;</name></domain>')

HOSTILE_XML = st.one_of(
    st.builds(deep_xml, st.integers(1, 5000)),
    st.just(ENTITY_BOMB),
    st.just("<domain>" + "<devices/>" * 50000 + "</domain>"),
    st.just(f"<domain><devices><disk device='disk'><target dev='{'v' * 100000}'/></disk></devices></domain>"),
)


def xml_values():
    """Text for an XML parser: random, mutated real XML, generated disks, hostile shapes."""
    attribute = st.one_of(st.none(), st.text(max_size=20), st.sampled_from(["vda", "qcow2", "raw", "block", ""]))
    disk = st.builds(
        lambda kind, fmt, src, dev: ("<disk device='disk'" + (f" type='{kind}'" if kind else "") + ">"
                                     + (f"<driver name='qemu' type='{fmt}'/>" if fmt is not None else "")
                                     + (f"<source file='{src}'/>" if src is not None else "")
                                     + (f"<target dev='{dev}'/>" if dev is not None else "") + "</disk>"),
        attribute, attribute, attribute, attribute)
    generated = st.lists(disk, max_size=4).map(lambda ds: "<domain><devices>" + "".join(ds) + "</devices></domain>")
    return st.one_of(st.text(), mutated(DOMAIN), mutated(CAPABILITIES), mutated(POOL), generated, HOSTILE_XML)


def text_values(*samples):
    """Random text, random bytes read as latin-1, mutated samples, a huge line."""
    return st.one_of(st.text(), st.binary().map(lambda b: b.decode("latin-1")),
                     *(mutated(s) for s in samples), st.just("9" * 5000 + " " + "x" * 200000))


def json_values(sample):
    """JSON of every shape and type, and mutated real JSON."""
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
    documents = st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=20)
    wrong_types = st.builds(lambda v: {"virtual-size": v, "format": "qcow2"},
                            st.one_of(scalars, st.just(1e999), st.just(-1), st.just(1 << 70), st.lists(scalars)))
    return st.one_of(documents.map(json.dumps), wrong_types.map(json.dumps), mutated(sample),
                     st.just("[" * 100000 + "]" * 100000), st.just('{"virtual-size": ' + "9" * 5000 + "}"),
                     text_values())


def handled(func, *args):
    """func(*args), or None when it raised a FerryError; anything else fails the test."""
    try:
        return func(*args)
    except FerryError as exc:
        assert str(exc)  # a clear error, never an empty one
        return None


# ---------------------------------------------------------------- domain XML and capabilities

@FUZZ
@given(xml_values())
def test_it_reads_any_domain_xml_as_sane_disks_or_refuses_it(text):
    disks = handled(lv.domain_disks, text)
    for disk in disks or []:
        assert re.match(r"^[a-z][a-z0-9]{1,31}$", disk["target"])
        assert re.match(r"^[a-z0-9][a-z0-9_-]{0,15}$", disk["format"])
        assert isinstance(disk["path"], str) and len(disk["path"]) <= 4096
        assert lv.storage_type(disk["type"], disk["format"]) in (
            status.STORAGE_LVM, status.STORAGE_FILE_QCOW2, status.STORAGE_FILE_RAW)


@FUZZ
@given(xml_values())
def test_it_reads_any_domain_xml_into_disk_targets_or_refuses_it(text):
    for disk in handled(migration.disk_targets, text) or []:
        assert set(disk) == {"target", "path", "format", "type", "slices"}
        assert disk["path"] is None or isinstance(disk["path"], str)
        for slice_ in disk["slices"]:
            assert len(slice_) == 3 and all(v is None or isinstance(v, str) for v in slice_)


@FUZZ
@given(st.one_of(xml_values(), st.text(max_size=60).map(
    lambda t: f"<domain><os><nvram>{t}</nvram></os><devices><tpm><backend type='emulator'/></tpm></devices></domain>")))
def test_it_reads_any_domain_xml_for_nvram_and_tpm_or_refuses_it(text):
    path = handled(disks.nvram_path, text)
    assert path is None or storage._path(path) == path  # fit for a command on either node
    assert handled(disks.tpm_dir, text, "6f1c0a52-3c1e-4f3e-9d6a-0a0b0c0d0e0f") in (
        None, "/var/lib/libvirt/swtpm/6f1c0a52-3c1e-4f3e-9d6a-0a0b0c0d0e0f")


@FUZZ
@given(xml_values())
def test_it_reads_any_capabilities_into_cpu_facts_or_refuses_them(text):
    facts = handled(lv.cpu_facts, text)
    if facts is not None:
        assert set(facts) == {"arch", "vendor", "model", "features", "host_cpu_xml"}
        assert all(isinstance(f, str) for f in facts["features"])
        json.dumps(facts)  # facts are stored as JSON


@FUZZ
@given(xml_values())
def test_it_reads_any_pool_xml_or_refuses_it(text):
    result = handled(lv.pool_facts, text)
    if result is not None:
        pool_type, path = result
        assert path is None or path.startswith("/")


def test_it_reads_the_real_samples_as_before():
    assert [(d["target"], d["format"], d["type"]) for d in lv.domain_disks(DOMAIN)] == [
        ("vda", "qcow2", "file"), ("vdb", "raw", "block")]
    assert lv.cpu_facts(CAPABILITIES)["features"] == ["vmx", "pcid"]
    assert lv.pool_facts(POOL) == ("dir", "/var/lib/libvirt/images")
    assert storage.parse_virtual_size(IMAGE_INFO) == 1 << 30
    assert node.parse_df(DF) == 60 and storage.parse_dd_rate(DD) == 536870912.0
    assert node.parse_backup_files(BACKUP_FILES) == ([{"name": "web.qcow2", "size": 1 << 30},
                                                      {"name": "web/inc-2.qcow2", "size": 524288}],
                                                     False)
    assert storage.parse_convert_progress(PROGRESS) == 100.0
    assert storage.probe_result(1, SOCAT) == "Connection refused"


@pytest.mark.parametrize("text", [deep_xml(100000), ENTITY_BOMB, "<domain><devices><disk device='disk'>"
                                  "<driver type='qcow2'/></disk></devices></domain>", "not xml", ""])
def test_it_refuses_hostile_domain_xml_with_a_clear_error(text):
    with pytest.raises(lv.UnexpectedXML):
        lv.domain_disks(text)


# ---------------------------------------------------------------- qemu-img info

class _Move:
    """What live._virtual_size needs of a Move: the source's name and a command runner."""

    def __init__(self, stdout):
        self.source = SimpleNamespace(name="node-evil")
        self.stdout, self.sent = stdout, []

    def sh(self, side, argv):
        self.sent.append(argv)
        return SimpleNamespace(ok=True, stdout=self.stdout, stderr="")


@FUZZ
@given(json_values(IMAGE_INFO), st.sampled_from(storage.FORMATS))
def test_it_reads_any_qemu_img_info_as_a_size_or_refuses_it(text, fmt):
    move = _Move(text)
    size = handled(live._virtual_size, move, "/var/lib/libvirt/images/web.img", fmt)
    assert size is None or (type(size) is int and 0 < size <= 1 << 60)
    argv = move.sent[0]
    assert argv[argv.index("-f") + 1] == fmt  # the definition's format, never qemu-img's guess


def test_it_always_tells_qemu_img_info_the_format():
    assert storage.image_info("/img/a", "raw")[3:5] == ["-f", "raw"]
    with pytest.raises(storage.RefusedCommand):
        storage.image_info("/img/a", "vmdk")


# ---------------------------------------------------------------- lvs and vgs

@FUZZ
@given(st.one_of(json_values(LVM_REPORT), mutated(LVM_REPORT),
                 st.tuples(json_values(LVM_REPORT), json_values(LVM_REPORT)).map(
                     lambda p: f"{p[0]}\n{lvm.SEPARATOR}\n{p[1]}")))
def test_it_reads_any_lvm_report_or_refuses_it(text):
    result = handled(lvm.parse_report, text)
    if result is not None:
        groups, volumes = result
        json.dumps(lvm.facts(groups, volumes))
        lvm.by_device(volumes)


# ---------------------------------------------------------------- /proc, /etc, df, uname

def _fact_text(value):
    return value is None or (isinstance(value, str) and 0 < len(value) <= 256 and value.isprintable())


@FUZZ
@given(text_values(OS_RELEASE))
def test_it_reads_any_os_release(text):
    facts = node.parse_os_release(text)
    assert set(facts) == {"id", "version_id", "name", "pretty_name"}
    assert all(_fact_text(v) for v in facts.values())


@FUZZ
@given(text_values(CPUINFO))
def test_it_reads_any_cpuinfo(text):
    facts = node.parse_cpuinfo(text)
    assert all(_fact_text(facts[k]) for k in ("vendor_id", "family", "model", "model_name"))
    assert all(isinstance(f, str) and 0 < len(f) <= 64 for f in facts["flags"])


@FUZZ
@given(text_values(DF, "Y\n", "6.1.0-18-amd64\n"))
def test_it_reads_any_df_nested_and_kernel_text(text):
    free = node.parse_df(text)
    assert free is None or (type(free) is int and 0 <= free < 10 ** 20)
    assert node.parse_nested(text) in (True, False)
    assert _fact_text(node.text_field(text))


@FUZZ
@given(st.one_of(text_values(BACKUP_FILES, DF),
                 st.lists(st.tuples(st.integers(0, 1 << 70), st.text(max_size=30)),
                          max_size=20).map(
                     lambda rs: "".join(f"{size}\t{name}\x00" for size, name in rs))))
def test_it_reads_any_backup_directory_listing_or_refuses_it(text):
    result = handled(node.parse_backup_files, text)
    if result is not None:
        files, cut = result
        assert cut in (True, False) and len(files) <= node.MAX_BACKUP_FILES
        for entry in files:
            assert set(entry) == {"name", "size"} and type(entry["size"]) is int
            assert 0 <= entry["size"] < 10 ** 20
            name = entry["name"]
            assert name.isprintable() and 0 < len(name) <= 4096 and not name.startswith("/")
            assert ".." not in name.split("/")
        json.dumps(files)  # facts are stored as JSON


def test_it_refuses_a_backup_listing_of_another_shape_and_cuts_a_long_one():
    for text in ("web.qcow2\x00", "12 web.qcow2\x00", "12\tweb.qcow2", "-1\tweb.qcow2\x00", DF):
        with pytest.raises(node.UnexpectedListing):
            node.parse_backup_files(text)
    many = "".join(f"1\tweb-{i}.qcow2\x00" for i in range(node.MAX_BACKUP_FILES + 1))
    files, cut = node.parse_backup_files(many)
    assert cut and len(files) == node.MAX_BACKUP_FILES
    with pytest.raises(node.UnexpectedListing):
        node.parse_backup_files(many + "1\tone-more\x00")
    assert node.parse_backup_files("1\t../etc/shadow\x002\tweb\nx.qcow2\x003\tok\x00") == (
        [{"name": "ok", "size": 3}], False)  # left out: names no server has


@FUZZ
@given(st.lists(st.one_of(st.text(max_size=300), st.sampled_from(["cp1", "", "a\nb", "x" * 201])),
                max_size=8))
def test_it_keeps_only_short_printable_checkpoint_names(names):
    dom = SimpleNamespace(UUIDString=lambda: "u1", listAllCheckpoints=lambda flags=0: [
        SimpleNamespace(getName=lambda n=n: n) for n in names])
    found = lv.Host(SimpleNamespace(listAllDomains=lambda: [dom]), "node-evil").checkpoints()
    kept = found.get("u1", [])
    assert kept == sorted(kept) and len(kept) <= lv.MAX_CHECKPOINTS
    assert all(0 < len(n) <= 200 and n.isprintable() and n in names for n in kept)
    json.dumps(found)


# ---------------------------------------------------------------- dd, qemu-img convert, socat

@FUZZ
@given(text_values(DD))
def test_it_reads_any_dd_summary(text):
    rate = storage.parse_dd_rate(text)
    assert rate is None or (isinstance(rate, float) and math.isfinite(rate) and rate >= 0)


@FUZZ
@given(text_values(PROGRESS))
def test_it_reads_any_convert_progress(text):
    percent = storage.parse_convert_progress(text)
    assert percent is None or 0 <= percent <= 100


@FUZZ
@given(st.integers(-(1 << 40), 1 << 40), text_values(SOCAT))
def test_it_reads_any_probe_failure(code, text):
    reason = storage.probe_result(code, text)
    assert isinstance(reason, str) and 0 < len(reason) <= 200


# ---------------------------------------------------------------- host keys and certificates

@FUZZ
@given(text_values(HOST_KEY))
def test_it_reads_any_host_key_or_refuses_it(text):
    printed = handled(ssh.fingerprint, text)
    assert printed is None or re.match(r"^SHA256:[A-Za-z0-9+/]{43}$", printed)
    handled(ssh._pkey, text)


PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ\n-----END CERTIFICATE-----\n"


@FUZZ
@given(text_values(PEM))
def test_it_judges_any_certificate_text(text):
    verdict = pki.judge(text, b"", "10.0.0.1")
    assert verdict.valid is False and verdict.reason


# ---------------------------------------------------------------- a sync of a node sending garbage

class _FakeVirConnect:
    """Stands in for libvirt's virConnect of one node: libvirt over SSH cannot run here.

    Only what a sync reads; `xml` is the domain XML the node sends.
    """

    def __init__(self, xml, uuid):
        self.xml, self.uuid = xml, uuid

    def getCapabilities(self):
        return CAPABILITIES

    def getLibVersion(self):
        return 9000000

    def getVersion(self):
        return 7002000

    def getInfo(self):
        return ["x86_64", 4096, 2, 2400, 1, 1, 2, 1]

    def getFreeMemory(self):
        return 2048 << 20

    def listAllStoragePools(self):
        return []

    def listAllDomains(self):
        xml, uuid = self.xml, self.uuid
        return [SimpleNamespace(
            info=lambda: (1, 262144, 262144, 1, 0), XMLDesc=lambda flags=0: xml,
            UUIDString=lambda: uuid, name=lambda: "web",
            snapshotNum=lambda flags=0: 0, isPersistent=lambda: 1,
            listAllCheckpoints=lambda flags=0: [SimpleNamespace(getName=lambda: "cp1")],
            blockInfo=lambda target: (1 << 30, 1 << 20, 1 << 30))]

    def close(self):
        pass


@pytest.fixture
def two_nodes(app, monkeypatch):
    """node-good and node-evil with one server each; SSH and libvirt are replaced at the infra
    boundary (ssh.connect, ssh.run, resources._open_host): real nodes cannot run here.
    node-evil answers lvs, uname, its backup directory listing and its domain XML with whatever
    `answers` holds."""
    answers = {"xml": DOMAIN, "lvm": LVM_REPORT, "kernel": "6.1.0\n", "backups": BACKUP_FILES}
    listing = tuple(node.list_backup_files("/var/lib/ferry/backups"))

    def run(conn, argv, **_kw):
        evil = conn.name == "node-evil"
        out = {tuple(lvm.REPORT): answers["lvm"] if evil else LVM_REPORT,
               tuple(node.OS_RELEASE): OS_RELEASE, tuple(node.CPUINFO): CPUINFO,
               tuple(node.KERNEL): answers["kernel"] if evil else "6.1.0\n",
               listing: answers["backups"] if evil else BACKUP_FILES}.get(tuple(argv), DF)
        return ssh.CommandResult(tuple(argv), 0, out, "")

    monkeypatch.setattr(ssh, "connect", lambda endpoint, timeout=10: SimpleNamespace(
        name="node-evil" if endpoint.host == "127.0.0.66" else "node-good", close=lambda: None))
    monkeypatch.setattr(ssh, "run", run)
    monkeypatch.setattr(resources, "_open_host", lambda endpoint, known_hosts, transport: lv.Host(
        _FakeVirConnect(answers["xml"], "00000000-0000-4000-8000-000000000066") if endpoint.host == "127.0.0.66"
        else _FakeVirConnect(DOMAIN, "6f1c0a52-3c1e-4f3e-9d6a-0a0b0c0d0e0f"), endpoint.host))
    with app.app_context():
        for name, host in (("node-good", "127.0.0.65"), ("node-evil", "127.0.0.66")):
            db.session.add(ComputeResource(name=name, host=host, key_path="/k", host_key=HOST_KEY))
        db.session.commit()
        good = db.session.scalar(db.select(ComputeResource).filter_by(name="node-good"))
        inventory.sync(good.id)
        yield SimpleNamespace(answers=answers, good=good)


def _rows_of(resource):
    """Every inventory row of a resource and its servers and disks, as plain values."""
    servers = db.session.scalars(db.select(Server).filter_by(compute_resource_id=resource.id)).all()
    return (resource.status, resource.status_reason, json.dumps(resource.facts, sort_keys=True),
            str(resource.last_synced_at),
            sorted((s.uuid, s.name, s.state, s.vcpus, s.memory_mib,
                    sorted((d.target, d.path, d.format, d.storage_type, d.virtual_size)
                           for d in s.disks)) for s in servers))


@pytest.mark.parametrize("what, garbage", [
    ("xml", "<domain><devices><disk device='disk'><source file='/x'/></disk>"),
    ("xml", deep_xml(100000)),
    ("xml", ENTITY_BOMB),
    ("lvm", '{"report": [{"vg": "everything"}]}'),
    ("backups", "total 8\n-rw-r--r-- 1 root root 42 web.qcow2\n"),
])
def test_it_fails_only_the_node_that_answers_garbage(two_nodes, what, garbage):
    evil = db.session.scalar(db.select(ComputeResource).filter_by(name="node-evil"))
    before = _rows_of(two_nodes.good)
    assert before[4] and before[4][0][5]  # the good node has a server with disks to lose
    two_nodes.answers[what] = garbage
    with pytest.raises(FerryError) as raised:
        inventory.sync(evil.id)
    assert "node-evil" in str(raised.value) and "nothing was recorded" in str(raised.value)
    db.session.expire_all()
    assert _rows_of(two_nodes.good) == before
    assert db.session.scalar(db.select(db.func.count(Server.id)).filter_by(
        compute_resource_id=evil.id)) == 0  # nothing of the garbage was recorded
    assert db.session.scalar(db.select(db.func.count(Disk.id))) == len(before[4][0][5])


@pytest.mark.parametrize("path", ["/", "/var/lib/nvram/", "/a/../etc/shadow", "VARS.fd", "/x\x00"])
def test_it_refuses_an_nvram_path_no_command_should_get(path):
    with pytest.raises(FerryError):  # "/" was found by the fuzzer: it reached the commands
        disks.nvram_path(f"<domain><os><nvram>{path}</nvram></os></domain>")


def test_a_sync_records_the_checkpoints_and_backup_files_the_node_shows(two_nodes):
    facts = two_nodes.good.facts
    assert facts["checkpoints"] == {"6f1c0a52-3c1e-4f3e-9d6a-0a0b0c0d0e0f": ["cp1"]}
    assert facts["backup_dir"] == {"path": "/var/lib/ferry/backups", "free_bytes": 60,
                                   "files": [{"name": "web.qcow2", "size": 1 << 30},
                                             {"name": "web/inc-2.qcow2", "size": 524288}],
                                   "files_cut": False}

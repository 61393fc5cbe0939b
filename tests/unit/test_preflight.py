"""Preflight without a node: the reuse rule (a Check, then Start), the inventory generation it
rests on, throughput from recent moves, refusals from the database, the connection pool.

What the nodes would answer (services.preflight.measure) is replaced by a canned measurement:
no node can run here, and the lab tests (tests/lab/test_migration_lab.py) ask real ones. Everything
else is real: the database, the stored reports, the generations, the checks.
"""
import mmap
import os
import shlex
import subprocess
import threading
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
from flask import current_app

from app import status
from app.extensions import db
from app.infra.commands import node as node_commands
from app.infra.libvirt import GuestOnDestination
from app.infra.pool import Pool
from app.infra.ssh import SSHError
from app.models import (ComputeResource, Disk, IpAddress, IpBlock, MigrationGroup, MigrationTask,
                        PreflightReport, Server, utcnow)
from app.services import inventory, preflight, resources

LIVE = {"mode": status.MODE_LIVE, "preserve_ip": True, "convert_to": None,
        "allow_postcopy": False}
FACTS = {"memory": {"total_mib": 64000, "free_mib": 60000},
         "cpu": {"vendor": "Intel", "cpuinfo": {"vendor_id": "GenuineIntel", "family": "6"}},
         "os": {"id": "debian", "version_id": "12"}, "libvirt_version": "9.0.0",
         "qemu_version": "7.2.0", "nbd_module": True, "nested_virtualization": False,
         "storage_pools": [{"name": "default", "type": "dir", "path": "/var/lib/libvirt/images",
                            "capacity_bytes": 10**12, "free_bytes": 10**12}],
         "backup_dir": {"path": "/var/lib/ferry/backups", "free_bytes": 10**12}}


@pytest.fixture
def database_url(db_url):
    """On SQLite and on PostgreSQL: a stored report comes back through each one's JSON."""
    return db_url


@pytest.fixture
def fleet(app_context):
    """node1 holding a running server `web`, and node2, as rows (no node behind them)."""
    node1, node2 = (ComputeResource(name=n, host=h, user="root", key_path="/k", facts=FACTS,
                                    host_key="ssh-ed25519 AAAA")
                    for n, h in (("node1", "10.0.0.1"), ("node2", "10.0.0.2")))
    web = Server(uuid="00000000-0000-4000-8000-000000000001", name="web", compute_resource=node1,
                 state=status.SERVER_RUNNING, vcpus=1, memory_mib=512,
                 disks=[Disk(target="vda", format="qcow2", path="/var/lib/libvirt/images/web.qcow2",
                             storage_type=status.STORAGE_FILE_QCOW2, virtual_size=10 * 2**30,
                             allocation=2**30)])
    db.session.add_all([node1, node2, web])
    db.session.commit()
    return {"node1": node1, "node2": node2, "web": web}


@pytest.fixture
def nodes_asked(monkeypatch):
    """Count the times the nodes are asked; they answer that all is well."""
    calls = []

    def measure(servers, sources, destination, options):
        calls.append([s.name for s in servers])
        return {"unreachable": [], "probes": {"node1": {49152: "ok", 8081: "ok"}},
                "cpu": {"web": [2, None]}, "throughput_bps": {"node1": 100e6},
                "throughput_from": {"node1": "probe"}, "dirty_rate_bps": {}}
    monkeypatch.setattr(preflight, "measure", measure)
    return calls


def check(fleet, **options):
    """One preflight of `web` to node2."""
    return preflight.run([fleet["web"]], fleet["node2"], dict(LIVE, **options))


def test_it_reuses_a_young_report_when_no_node_changed(fleet, nodes_asked):
    first = check(fleet)
    assert first["summary"]["status"] == "pass", [r for r in first["results"] if r["status"] != "pass"]
    assert first["reused"] is None

    second = check(fleet, acknowledged=True)  # an acknowledgement changes no check
    assert len(nodes_asked) == 1
    assert second["reused"]["age_s"] >= 0
    assert second["results"] == first["results"] and second["eta"] == first["eta"]


def test_it_asks_the_nodes_again_once_the_report_is_older_than_the_setting(app, fleet,
                                                                           nodes_asked):
    check(fleet)
    stored = db.session.scalar(db.select(PreflightReport))
    stored.created_at = utcnow() - timedelta(seconds=app.config["PREFLIGHT_REUSE_S"] + 1)
    db.session.commit()

    assert check(fleet)["reused"] is None
    assert len(nodes_asked) == 2


def test_it_asks_the_nodes_again_when_a_node_changed_since(fleet, nodes_asked):
    check(fleet)
    fleet["node2"].facts = dict(FACTS, memory={"total_mib": 64000, "free_mib": 1000})
    db.session.commit()

    report = check(fleet)
    assert report["reused"] is None and len(nodes_asked) == 2
    assert check(fleet)["reused"] is not None  # and that report is reused in turn
    fleet["web"].memory_mib = 1024  # a server of a node changing counts as well
    db.session.commit()
    check(fleet)
    assert len(nodes_asked) == 3


def test_it_asks_the_nodes_again_for_other_options(fleet, nodes_asked):
    db.session.add(IpBlock(name="net2", cidr="10.8.0.0/24", gateway="10.8.0.1",
                           compute_resources=[fleet["node2"]]))  # room for a new address
    db.session.commit()
    check(fleet)
    check(fleet, allow_postcopy=True)
    check(fleet, preserve_ip=False)
    assert len(nodes_asked) == 3


def test_it_never_reuses_when_the_setting_is_zero(app, fleet, nodes_asked):
    app.config["PREFLIGHT_REUSE_S"] = 0
    check(fleet)
    check(fleet)
    assert len(nodes_asked) == 2


def test_it_judges_a_reused_report_on_what_the_database_holds_now(fleet, nodes_asked):
    block = IpBlock(name="net1", cidr="10.9.0.0/24", gateway="10.9.0.1",
                    compute_resources=[fleet["node1"], fleet["node2"]])
    db.session.add(IpAddress(block=block, address="10.9.0.5", server=fleet["web"]))
    db.session.commit()
    assert check(fleet)["summary"]["status"] == "pass"

    # Taking the block away from node2 changes no node's facts or servers: the nodes'
    # measurements are reused, but every check runs again on the database as it is now.
    block.compute_resources.remove(fleet["node2"])
    db.session.commit()
    report = check(fleet)
    assert report["reused"] is not None and len(nodes_asked) == 1
    assert report["summary"]["status"] == "fail"
    assert any(r["name"] == "ip-addresses" and r["status"] == "fail" for r in report["results"])


def test_it_refuses_from_the_database_without_asking_a_node(fleet, nodes_asked):
    fleet["node2"].status = status.RESOURCE_MAINTENANCE
    db.session.commit()

    report = check(fleet)
    assert report["summary"]["status"] == "fail"
    assert any(r["name"] == "destination-active" and r["status"] == "fail"
               for r in report["results"]), report["results"]
    assert nodes_asked == []


def test_it_raises_the_generation_when_facts_or_servers_change(fleet):
    node1, node2, web = fleet["node1"], fleet["node2"], fleet["web"]
    before = {n.name: n.generation for n in (node1, node2)}

    node2.facts = FACTS  # the same document again: nothing changed
    node2.name = "renamed"  # not something a preflight reads
    db.session.commit()
    assert node2.generation == before["node2"]

    web.compute_resource = node2  # a move: both ends change
    db.session.commit()
    assert (node1.generation, node2.generation) == (before["node1"] + 1, before["node2"] + 1)

    db.session.add(Server(uuid="00000000-0000-4000-8000-000000000002", name="new",
                          compute_resource=node1, state=status.SERVER_STOPPED))
    node2.status = status.RESOURCE_UNREACHABLE
    db.session.commit()
    assert (node1.generation, node2.generation) == (before["node1"] + 2, before["node2"] + 2)


def test_it_takes_the_throughput_from_recent_moves_between_the_same_nodes(app, fleet):
    node1, node2, web = fleet["node1"], fleet["node2"], fleet["web"]
    group = MigrationGroup(status=status.MIGRATION_FINISHED, options={})
    now = utcnow()
    for ago, rate in ((7200, 1), (300, 10), (200, 30), (100, 20)):  # MiB/s
        group.tasks.append(MigrationTask(
            server=web, source=node1, destination=node2, mode=status.MODE_LIVE,
            status=status.MIGRATION_FINISHED, finished_at=now - timedelta(seconds=ago),
            result={"bytes": rate * 2**20 * 4, "total_ms": 4000}))
    group.tasks.append(MigrationTask(  # the other way round: another link
        server=web, source=node2, destination=node1, mode=status.MODE_LIVE,
        status=status.MIGRATION_FINISHED, finished_at=now, result={"bytes": 1, "total_ms": 1000}))
    db.session.add(group)
    db.session.commit()

    assert preflight.recent_throughput(node1.id, node2.id, 3600) == 20 * 2**20  # median of 3
    assert preflight.recent_throughput(node1.id, node2.id, 150) == 20 * 2**20
    assert preflight.recent_throughput(node1.id, node2.id, 50) is None  # too old: probe
    assert preflight.recent_throughput(node1.id, node2.id, 0) is None  # 0: always probe
    assert preflight.recent_throughput(node2.id, node2.id, 3600) is None


def test_a_server_not_sampled_takes_the_dirty_rate_its_last_live_move_saw(app, fleet):
    # Without a sample (FERRY_SAMPLE_DIRTY_RATE off, as on a TCG lab) a busy server's ETA counted
    # it idle: bench link_eta, -28 % and -37 % at the start for guests dirtying 8 and 12 MiB/s.
    node1, node2, web = fleet["node1"], fleet["node2"], fleet["web"]
    mib, now = 2**20, utcnow()
    group = MigrationGroup(status=status.MIGRATION_FINISHED, options={})
    for ago, dirty, mode, state in (
            (3600, 4, status.MODE_LIVE, status.MIGRATION_FINISHED),
            (600, 6, status.MODE_LIVE, status.MIGRATION_FINISHED),
            (300, None, status.MODE_LIVE, status.MIGRATION_FINISHED),  # libvirt saw none
            (200, 50, status.MODE_LIVE, status.MIGRATION_FAILED),
            (100, 70, status.MODE_OFFLINE, status.MIGRATION_FINISHED)):
        group.tasks.append(MigrationTask(
            server=web, source=node1, destination=node2, mode=mode, status=state,
            finished_at=now - timedelta(seconds=ago),
            result={"bytes": 1, "total_ms": 1000, "dirty_rate_bps": dirty and dirty * mib,
                    "dirty_set_bytes": dirty and 10 * dirty * mib}))
    db.session.add(group)
    db.session.commit()

    # the latest that saw one; none too old
    assert preflight.learned_dirty_rates([web.id, 999], 3600 * 2) == {web.id: (6 * mib, 60 * mib)}
    assert preflight.learned_dirty_rates([web.id], 400) == {}
    measured = {"dirty_rate_bps": {}, "dirty_rate_from": {}, "dirty_set_bytes": {}}
    preflight.learn_dirty_rates([web], measured)
    assert measured == {"dirty_rate_bps": {"web": 6 * mib}, "dirty_rate_from": {"web": "last move"},
                        "dirty_set_bytes": {"web": 60 * mib}}
    sampled = {"dirty_rate_bps": {"web": mib}, "dirty_rate_from": {}, "dirty_set_bytes": {}}
    preflight.learn_dirty_rates([web], sampled)  # a sample of today wins
    assert sampled == {"dirty_rate_bps": {"web": mib}, "dirty_rate_from": {"web": "sample"},
                       "dirty_set_bytes": {}}

    def eta(**more):
        return preflight.etas([web], node2, preflight.options_of({"mode": status.MODE_LIVE}), {
            "throughput_bps": {"node1": 10 * mib}, "dirty_rate_bps": {}, "touched_bytes": {},
            **more})["web"]["seconds"]
    idle, busy = eta(), eta(dirty_rate_bps=measured["dirty_rate_bps"])
    assert eta(**measured) < busy  # what it writes to bounds what a pass resends
    assert idle < eta(**measured)


class FakeConnection:
    """A connection for the pool's tests: the pool's open/close are the I/O boundary."""

    def __init__(self, key):
        self.key, self.closed, self.alive = key, False, True


def pool_of(opened, **kwargs):
    def open_(key):
        conn = FakeConnection(key)
        opened.append(conn)
        return conn

    def close(conn):
        conn.closed = True
    return Pool(open_, close, lambda conn: conn.alive, **kwargs)


def test_it_lends_a_pooled_connection_again_and_never_to_two_at_once():
    opened = []
    pool = pool_of(opened)
    a = pool.acquire(1, "key")
    b = pool.acquire(1, "key")  # a is lent: b is another one
    assert a is not b and len(opened) == 2
    pool.release(1, "key", a)
    assert pool.acquire(1, "key") is a and len(opened) == 2


def test_it_closes_a_broken_a_dead_or_a_repinned_connection():
    opened, now = [], [0.0]
    pool = pool_of(opened, max_idle_s=60, clock=lambda: now[0])
    conn = pool.acquire(1, "old key")
    pool.release(1, "old key", conn, broken=True)
    assert conn.closed and pool.idle_count() == 0

    conn = pool.acquire(1, "old key")
    pool.release(1, "old key", conn)
    fresh = pool.acquire(1, "new key")  # the node's key was re-pinned
    assert conn.closed and fresh is not conn

    pool.release(1, "new key", fresh)
    fresh.alive = False
    again = pool.acquire(1, "new key")
    assert fresh.closed and again is not fresh

    pool.release(1, "new key", again)
    now[0] += 61  # idle too long
    assert pool.acquire(1, "new key") is not again and again.closed


def test_it_keeps_at_most_a_few_idle_connections_per_node():
    opened = []
    pool = pool_of(opened, per_key=2)
    conns = [pool.acquire(1, "key") for _ in range(3)]
    for conn in conns:
        pool.release(1, "key", conn)
    assert pool.idle_count(1) == 2 and conns[2].closed
    pool.clear()
    assert pool.idle_count() == 0 and all(c.closed for c in conns)


@pytest.fixture
def nodes(monkeypatch):
    """What measure() does with the nodes, recorded: the functions that talk to a node answer
    from here (no node runs here; the lab tests reach real ones)."""
    seen = {"borrowed": [], "given_back": [], "threads": set(), "probes": 0}

    def borrow(node):
        seen["threads"].add(threading.get_ident())
        if node.name in seen.get("down", ()):
            raise SSHError(f"cannot reach {node.endpoint.host}:22")
        seen["borrowed"].append(node.name)
        return resources.Connections(ssh=f"ssh-{node.name}", libvirt=f"libvirt-{node.name}")

    def give_back(node, pair, broken=False):
        seen["given_back"].append((node.name, broken))

    def throughput(src, dst, destination):
        seen["probes"] += 1
        return 50e6
    class Shell:
        """A node's connection after the facts' read-ahead: it answers the guests' resident
        memory from seen["resident"] ({name: KiB}), as guest_resident's command prints it."""

        def __init__(self, conn, argvs):
            self.conn, self.host = conn, conn
            seen.setdefault("read_ahead", []).append(argvs)

        def run(self, line, **kwargs):
            name, kib = shlex.split(line)[-2:]
            resident = seen.get("resident", {}).get(name)
            return SimpleNamespace(exited=0 if resident else 3, stderr="",
                                   stdout=f"{kib} {resident}\n" if resident else "")
    monkeypatch.setattr(resources, "borrow", borrow)
    monkeypatch.setattr(resources, "give_back", give_back)
    monkeypatch.setattr(inventory, "read_ahead", Shell)
    monkeypatch.setattr(inventory, "facts_from", lambda node, conn, host: dict(
        FACTS, gathered_by=conn.conn))
    monkeypatch.setattr(preflight, "_probe_ports", lambda *a: {49152: "ok", 8081: "ok"})
    monkeypatch.setattr(preflight, "_throughput", throughput)
    monkeypatch.setattr(preflight, "lv_judge", lambda src, dst, uuid, sample: GuestOnDestination(
        2, None, True))
    return seen


def test_it_gathers_from_both_nodes_in_threads_and_gives_the_connections_back(fleet, nodes):
    report = check(fleet)

    assert report["summary"]["status"] == "pass", report["results"]
    assert sorted(nodes["borrowed"]) == ["node1", "node2"]
    assert threading.get_ident() not in nodes["threads"]  # each node in a thread of its own
    assert sorted(nodes["given_back"]) == [("node1", False), ("node2", False)]
    assert fleet["node2"].facts["gathered_by"] == "ssh-node2"  # stored from the node's answer
    assert report["measured"]["throughput_from"] == {"node1": "probe"} and nodes["probes"] == 1


def test_it_uses_the_throughput_of_a_recent_move_instead_of_probing(fleet, nodes):
    db.session.add(MigrationGroup(status=status.MIGRATION_FINISHED, options={}, tasks=[
        MigrationTask(server=fleet["web"], source=fleet["node1"], destination=fleet["node2"],
                      mode=status.MODE_LIVE, status=status.MIGRATION_FINISHED,
                      finished_at=utcnow(), result={"bytes": 8 * 2**20, "total_ms": 1000})]))
    db.session.commit()

    report = check(fleet)
    assert nodes["probes"] == 0
    assert report["throughput_bps"] == {"node1": 8 * 2**20}
    assert report["measured"]["throughput_from"] == {"node1": "moves"}


def test_the_eta_counts_only_the_memory_the_guest_ever_touched(fleet, nodes, monkeypatch):
    # An idle 256 MiB lab guest had touched 124 MiB and sent 97 MB; assuming all of its
    # memory put the estimate at +75 % (bench link_eta). The source node tells, in the same
    # exec as its facts, how much of the guest's memory is resident.
    monkeypatch.setitem(current_app.config, "PREFLIGHT_REUSE_S", 0)  # ask the nodes each time
    untouched = check(fleet)["eta"]["web"]["seconds"]
    nodes["resident"] = {"web": 128 * 1024}  # KiB: a quarter of its 512 MiB
    report = check(fleet)
    assert report["measured"]["touched_bytes"] == {"web": 128 * 2**20}
    asked = [argv[-2:] for argvs in nodes["read_ahead"] for argv in argvs if argv[0] == "sh"]
    assert ["web", str(512 * 1024)] in asked  # with node1's facts, in one exec
    # 384 MiB fewer at 50 MB/s (the probe's answer here) is 8 s sooner.
    assert untouched - report["eta"]["web"]["seconds"] == pytest.approx(384 * 2**20 / 50e6)
    assert report["eta"]["web"]["high"] >= untouched * 0.99  # the band's high end: all of it


def test_the_guests_of_a_node_share_one_time_limit_for_reading_their_memory():
    # An evacuation reads every running guest of its node in one exec, one after the other: a
    # limit of its own each (10 s) let a node of large guests hold the preflight for minutes.
    def guest(name, node, state=status.SERVER_RUNNING):
        return SimpleNamespace(name=name, compute_resource_id=node, state=state, memory_mib=512)
    many = [guest(f"vm{i}", 1) for i in range(40)] + [guest("db", 2), guest("cold", 2, "stopped")]
    guests = preflight.running_guests(many + [guest("x/y", 2)])  # a name libvirt refuses: left out
    limits = {node: {argv[4] for argv in argvs.values()} for node, argvs in guests.items()}
    assert limits == {1: {"0.2"}, 2: {"10"}}  # 10 s shared by 40; db reads alone
    assert sorted(guests[2]) == ["db"]
    hundreds = preflight.running_guests([guest(f"vm{i}", 1) for i in range(300)])
    assert {argv[4] for argv in hundreds[1].values()} == {"0.1"}  # never less than a tenth


def test_the_resident_read_finds_the_touched_part_of_a_mapping_in_a_real_smaps(tmp_path):
    # This test process stands in for QEMU: a mapping of a size nothing else here has, a
    # quarter of it touched, read through the very command a node runs (with its pid file
    # here instead of libvirt's /run/libvirt/qemu).
    size = 4 * 2**20 + 3 * 4096
    memory = mmap.mmap(-1, size)
    memory[:2**20] = b"x" * 2**20
    (tmp_path / "web 1.pid").write_text(f"{os.getpid()}\n")
    argv = node_commands.guest_resident("web 1", size // 1024, 5)
    argv[2] = argv[2].replace("/run/libvirt/qemu/", f"{tmp_path}/")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert 2**20 <= node_commands.parse_resident(done.stdout, size // 1024) < size
    gone = subprocess.run(node_commands.guest_resident("not here", 4096, 5), capture_output=True)
    assert gone.returncode == 3 and gone.stdout == b""
    memory.close()


def test_it_reports_a_node_it_cannot_reach_and_stores_nothing(fleet, nodes):
    nodes["down"] = ("node2",)

    report = check(fleet)
    assert report["summary"]["status"] == "fail"
    assert [r["message"] for r in report["results"] if r["name"] == "reachable"] == [
        "node2 cannot be reached: cannot reach 10.0.0.2:22"]
    assert nodes["given_back"] == [("node1", False)]
    assert db.session.scalar(db.select(PreflightReport)) is None  # a Start asks again


def test_it_probes_both_directions_at_once(monkeypatch):
    """Each direction waits, up to a few seconds, for the other to be under way: probed one
    after the other, the first would see the second never start."""
    started = {"towards node2": threading.Event(), "towards node1": threading.Event()}
    overlapped = {}

    def probe(from_conn, to_conn, to_address, port):
        mine, other = f"towards {to_address}", ({*started} - {f"towards {to_address}"}).pop()
        started[mine].set()
        overlapped[mine] = started[other].wait(5)
        return "ok" if overlapped[mine] else "waited alone"

    monkeypatch.setattr(preflight, "_probe", probe)
    source, destination = ComputeResource(host="node1"), ComputeResource(host="node2")
    ports = preflight._probe_ports("ssh-1", "ssh-2", source, destination, 10809)
    assert ports == {49152: "ok", 10809: "ok"}
    assert overlapped == {"towards node2": True, "towards node1": True}


class Port:
    """One TCP port between two nodes, in memory, seen through the SSH connections _probe
    uses: `listener` runs the destination's listener (it binds `bind_after` seconds after its
    exec, as on a loaded node; its first `fail_starts` execs fail), `probe` the source's
    connect. A firewall refuses every connect."""

    REFUSED = "2026/11/30 socat[9] E connect(5, AF=2 10.0.0.2:49152, 16): Connection refused"

    def __init__(self, bind_after=0.0, fail_starts=0, firewall=False):
        self.bind_after, self.fail_starts, self.firewall = bind_after, fail_starts, firewall
        self.bound, self.reached, self.starts = threading.Event(), threading.Event(), 0

    def listener(self, line, timeout=None, **_):
        assert "TCP-LISTEN:49152" in line
        self.starts += 1
        if self.starts <= self.fail_starts:
            raise OSError("ChannelException(1, 'Administratively prohibited')")
        time.sleep(self.bind_after)
        self.bound.set()
        reached = self.reached.wait(preflight.LISTEN_S)
        self.bound.clear()
        return SimpleNamespace(exited=0 if reached else 124, stdout="", stderr="")

    def probe(self, line, timeout=None, **_):
        assert "TCP:10.0.0.2:49152" in line
        if self.bound.is_set() and not self.firewall:
            self.reached.set()
            return SimpleNamespace(exited=0, stdout="", stderr="")
        return SimpleNamespace(exited=1, stdout="", stderr=self.REFUSED)

    def __call__(self):
        return preflight._probe(SimpleNamespace(host="node1", run=self.probe),
                                SimpleNamespace(host="node2", run=self.listener), "10.0.0.2",
                                49152)


@pytest.fixture
def short_listens(monkeypatch):
    monkeypatch.setattr(preflight, "LISTEN_S", 3)


def test_a_listener_slow_to_start_is_waited_for_not_taken_for_a_closed_port(short_listens):
    """A loaded node (or a slow VM) took over a second to run the listener: forty quick asks
    were over before it listened, and a preflight failed "Connection refused" on an open
    port (CI, lvm1 -> node1)."""
    port = Port(bind_after=1.0)
    assert port() == "ok"
    assert port.starts == 1


def test_a_listener_that_did_not_start_is_started_again(short_listens):
    port = Port(fail_starts=1)
    assert port() == "ok"
    assert port.starts == 2


def test_a_listener_that_never_started_is_named_beside_the_refusal(short_listens):
    port = Port(fail_starts=2)
    result = port()
    assert result.startswith("Connection refused; the listener on 10.0.0.2 did not listen:")
    assert "Administratively prohibited" in result
    assert port.starts == 2


def test_a_port_refused_while_its_listener_listens_is_refused(short_listens, monkeypatch):
    monkeypatch.setattr(preflight, "PROBE_WAIT_S", 0.5)
    port = Port(firewall=True)
    assert port() == "Connection refused"
    assert port.starts == 1  # a listener that listened is not run again

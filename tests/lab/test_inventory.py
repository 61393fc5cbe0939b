"""Inventory sync against the live lab: facts, servers, idempotence, missing and unreachable nodes."""
import os

import pytest

from app import status
from app.errors import FerryError
from app.extensions import db
from app.infra import ssh
from app.models import ComputeResource, Job, Server
from app.services import inventory, jobs

pytestmark = pytest.mark.lab

LAB_STATES = {"running": status.SERVER_RUNNING, "shut off": status.SERVER_STOPPED,
              "paused": status.SERVER_PAUSED}


def sync_all(app, nodes):
    """Sync every node in-process and return the summaries."""
    with app.app_context():
        return {name: inventory.sync(rid) for name, rid in nodes.items()}


def servers_by_name(app):
    """name -> (state, resource name, [(format, storage type)], snapshots) from the database."""
    with app.app_context():
        return {s.name: (s.state, s.compute_resource.name,
                         [(d.format, d.storage_type) for d in s.disks], s.snapshot_count)
                for s in db.session.scalars(db.select(Server))}


def test_it_finds_every_lab_server_with_state_format_and_snapshots(app, lab, lab_server, nodes):
    lab_server("node1", "inv-running-raw", format="raw")
    lab_server("node2", "inv-stopped-qcow2", format="qcow2", stopped=True)
    lab.exec("node2", "virsh", "snapshot-create-as", "inv-stopped-qcow2", "before-upgrade", check=True)
    sync_all(app, nodes)
    found = servers_by_name(app)
    for entry in lab.servers():
        state, node, _, _ = found[entry["name"]]
        assert (state, node) == (LAB_STATES[entry["state"]], entry["node"]), entry
    assert found["inv-running-raw"] == (status.SERVER_RUNNING, "node1",
                                        [("raw", status.STORAGE_FILE_RAW)], 0)
    assert found["inv-stopped-qcow2"] == (status.SERVER_STOPPED, "node2",
                                          [("qcow2", status.STORAGE_FILE_QCOW2)], 1)
    with app.app_context():
        disk = db.session.scalar(db.select(Server).filter_by(name="inv-stopped-qcow2")).disks[0]
        assert disk.virtual_size == 1024 ** 3 and 0 < disk.allocation < disk.virtual_size
        assert disk.path.startswith("/var/lib/libvirt/images/")


def test_it_gathers_the_facts_preflight_needs(app, lab, nodes):
    sync_all(app, {"node1": nodes["node1"]})
    with app.app_context():
        facts = db.session.get(ComputeResource, nodes["node1"]).facts
    assert facts["cpu"]["arch"] == "x86_64" and facts["cpu"]["vendor"]
    assert facts["cpu"]["host_cpu_xml"].startswith("<cpu")
    assert facts["cpu"]["cpuinfo"]["vendor_id"] and facts["cpu"]["cpuinfo"]["flags"]
    assert facts["os"]["id"] and facts["os"]["version_id"]
    assert facts["kernel"] and facts["libvirt_version"] == "9.0.0"
    assert facts["qemu_version"].startswith("7.")
    assert isinstance(facts["nested_virtualization"], bool) and isinstance(facts["nbd_module"], bool)
    assert facts["memory"]["total_mib"] > facts["memory"]["free_mib"] > 0
    pool = next(p for p in facts["storage_pools"] if p["path"] == "/var/lib/libvirt/images")
    assert pool["type"] == "dir" and pool["free_bytes"] > 0
    assert facts["backup_dir"]["path"] == "/var/lib/ferry/backups"
    assert facts["backup_dir"]["free_bytes"] > 0
    assert facts["gathered_at"]


def test_it_is_idempotent_and_marks_a_vanished_server_missing(app, lab, lab_server, nodes):
    lab_server("node3", "inv-vanishing", format="raw", stopped=True)
    first = sync_all(app, nodes)
    before = servers_by_name(app)
    assert sync_all(app, nodes) == {n: {**s, "missing": 0} for n, s in first.items()}
    assert servers_by_name(app) == before
    lab.rmserver("inv-vanishing")
    sync_all(app, {"node3": nodes["node3"]})
    assert servers_by_name(app)["inv-vanishing"][0] == status.SERVER_MISSING


def test_it_shows_names_with_shell_metacharacters_and_runs_nothing(app, lab, lab_server, nodes,
                                                                   client, alice, login,
                                                                   monkeypatch):
    # A spy, not a stub: every command still runs on the node; we only keep a copy of it.
    sent = []
    real_run = ssh.run
    monkeypatch.setattr(ssh, "run", lambda conn, argv, **kw: sent.append(argv) or real_run(conn, argv, **kw))
    # The marker is unique to this run: the nodes share the machine's /tmp with everyone else.
    marker = f"pwned{os.getpid()}"
    names = [f"db;touch {marker}", "web$(id)", "q'uote`uname`"]
    for name in names:
        lab_server("node3", name, format="qcow2", stopped=True)
    sync_all(app, {"node3": nodes["node3"]})
    assert set(names) <= set(servers_by_name(app))
    assert sent and not [argv for argv in sent if any(n in " ".join(argv) for n in names)]
    listing = lab.exec("node3", "sh", "-c", "ls -a / /root /tmp /var/lib/libvirt/images", check=True)
    assert marker not in listing.stdout.split() and "uid=" not in listing.stdout
    login(client, "alice")
    page = client.get("/servers/").get_data(as_text=True)
    assert f"db;touch {marker}" in page and "web$(id)" in page and "q&#39;uote`uname`" in page


def test_it_marks_an_unreachable_node_with_the_reason_and_recovers(app, lab, nodes):
    lab.cli("block", "node2", "22")
    try:
        with app.app_context(), pytest.raises(FerryError, match="node2 is unreachable"):
            inventory.sync(nodes["node2"])
        with app.app_context():
            node = db.session.get(ComputeResource, nodes["node2"])
            address = lab.node("node2")["address"]  # the lab instance's own, not a fixed one
            assert node.status == status.RESOURCE_UNREACHABLE and address in node.status_reason
    finally:
        lab.cli("unblock", "node2", "22")
    sync_all(app, {"node2": nodes["node2"]})
    with app.app_context():
        node = db.session.get(ComputeResource, nodes["node2"])
        assert node.status == status.RESOURCE_ACTIVE and node.status_reason is None


def test_it_syncs_in_a_worker_job_from_the_button(app, lab, lab_server, nodes, client, bob, login,
                                                  redis_conn, work):
    lab_server("node1", "inv-from-job", format="raw")
    login(client, "bob")
    response = client.post(f"/resources/{nodes['node1']}/sync")
    assert response.status_code == 200 and "sync_resource" in response.get_data(as_text=True)
    work()
    with app.app_context():
        job = db.session.scalar(db.select(Job).order_by(Job.id.desc()))
        assert job.status == status.JOB_FINISHED, job.traceback or job.error
    assert servers_by_name(app)["inv-from-job"][0] == status.SERVER_RUNNING


def test_it_syncs_from_the_cli(app, lab, lab_server, nodes, runner):
    lab_server("node2", "inv-from-cli", format="qcow2")
    result = runner.invoke(args=["sync", "node2"])
    assert result.exit_code == 0, result.output
    assert "node2:" in result.output
    assert servers_by_name(app)["inv-from-cli"][:2] == (status.SERVER_RUNNING, "node2")


def test_it_schedules_syncs_for_the_worker(app, lab, nodes, redis_conn, work):
    from worker import schedule
    assert len(schedule.tick(app)) == 3
    work()
    with app.app_context():
        done = db.session.scalars(db.select(Job).filter_by(name="sync_resource")).all()
        assert [j.status for j in done] == [status.JOB_FINISHED] * 3
        assert all(r.last_synced_at for r in db.session.scalars(db.select(ComputeResource)))
    assert jobs  # the runner module is what the schedule enqueues through

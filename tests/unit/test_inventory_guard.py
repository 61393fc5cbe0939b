"""Inventory sync leaves a server under migration where its task keeps it.

No lab here: `record_guests` is given what libvirt reports mid-move (the
domain paused on the destination, gone from the source), on SQLite and
PostgreSQL.
"""
import pytest

from app import status
from app.extensions import db
from app.infra.libvirt import DiskInfo, GuestInfo
from app.models import ComputeResource, Disk, MigrationGroup, MigrationTask, Server
from app.services import inventory

UUID = "5b0c6a52-6d2e-4b8c-9b55-0d1c2a3b4c5d"


@pytest.fixture
def database_url(db_url):
    """Both databases."""
    return db_url


@pytest.fixture
def moving(app_context):
    """web1 on node1, with a running live migration task to node2; returns (node1, node2, task)."""
    node1, node2 = (ComputeResource(name=n, host=f"10.0.0.{i}", key_path="/k")
                    for i, n in ((11, "node1"), (12, "node2")))
    server = Server(uuid=UUID, name="web1", compute_resource=node1, state=status.SERVER_RUNNING,
                    vcpus=1, memory_mib=256,
                    disks=[Disk(target="vda", path="/img/web1.qcow2", format="qcow2",
                                storage_type=status.STORAGE_FILE_QCOW2)])
    task = MigrationTask(server=server, source=node1, destination=node2, mode=status.MODE_LIVE,
                         status=status.MIGRATION_RUNNING)
    db.session.add(MigrationGroup(status=status.MIGRATION_RUNNING, options={}, tasks=[task]))
    db.session.commit()
    return node1, node2, task


def seen_as(state):
    """web1 as libvirt reports it on a host."""
    return GuestInfo(uuid=UUID, name="web1", state=state, vcpus=1, memory_mib=256,
                     snapshot_count=0, persistent=state != status.SERVER_PAUSED,
                     disks=[DiskInfo("vda", "/img/web1.qcow2", "qcow2", status.STORAGE_FILE_QCOW2,
                                     2**30, 2**24)])


def web1():
    """The server row as the database holds it now."""
    db.session.expire_all()
    server = db.session.scalar(db.select(Server).filter_by(uuid=UUID))
    return server.compute_resource.name, server.state


def test_it_does_not_move_a_server_its_task_is_migrating(moving):
    node1, node2, _ = moving
    summary = inventory.record_guests(node2, [seen_as(status.SERVER_PAUSED)])
    db.session.commit()
    assert summary["under_migration"] == 1
    assert web1() == ("node1", status.SERVER_RUNNING)


def test_it_does_not_mark_a_server_missing_while_its_task_runs(moving):
    node1, _, _ = moving
    summary = inventory.record_guests(node1, [])
    db.session.commit()
    assert summary["missing"] == 0
    assert web1() == ("node1", status.SERVER_RUNNING)


def test_it_records_the_server_again_once_its_task_has_ended(moving):
    _, node2, task = moving
    task.status = status.MIGRATION_FINISHED
    db.session.commit()
    summary = inventory.record_guests(node2, [seen_as(status.SERVER_RUNNING)])
    db.session.commit()
    assert summary["under_migration"] == 0
    assert web1() == ("node2", status.SERVER_RUNNING)

"""The models and the migrations, on SQLite and on PostgreSQL alike."""
from datetime import timezone

import pytest
from sqlalchemy.exc import IntegrityError

from app import status
from app.extensions import db
from app.models import (ApiToken, AuditEntry, ComputeResource, Disk, IpAddress, IpBlock,
                        Job, MigrationGroup, MigrationTask, Server, TaskEvent, User)


@pytest.fixture
def database_url(db_url):
    """Every test here runs once on SQLite and once on PostgreSQL."""
    return db_url


def make_resource(name, **kwargs):
    """A compute resource with the fields a sync would fill."""
    return ComputeResource(name=name, host="10.0.0.1", port=22, user="root", key_path="/k",
                           host_key="ssh-ed25519 AAAA", host_key_fingerprint="SHA256:x", **kwargs)


def test_it_stores_a_compute_resource_with_facts_and_tags(app_context):
    facts = {"cpu": {"vendor": "Intel", "cpuinfo": {"flags": ["vmx", "sse4_2"]}},
             "memory": {"total_mib": 4096, "free_mib": 1024}}
    db.session.add(make_resource("node1", facts=facts, storage_tags=["ssd"]))
    db.session.commit()
    db.session.expunge_all()
    node = db.session.scalar(db.select(ComputeResource).filter_by(name="node1"))
    assert node.facts["cpu"]["cpuinfo"]["flags"] == ["vmx", "sse4_2"]
    assert node.storage_tags == ["ssd"]
    assert node.status == status.RESOURCE_ACTIVE
    assert node.memory_used_percent == 75
    assert node.created_at.tzinfo == timezone.utc


def test_it_refuses_two_compute_resources_with_one_name(app_context):
    db.session.add_all([make_resource("node1"), make_resource("node1")])
    with pytest.raises(IntegrityError):
        db.session.commit()


def test_it_links_servers_disks_ips_and_blocks(app_context):
    node1, node2 = make_resource("node1"), make_resource("node2")
    block = IpBlock(name="public", cidr="10.78.1.0/24", gateway="10.78.1.1",
                    compute_resources=[node1, node2])
    server = Server(uuid="6f0d7d5e-0000-4000-8000-000000000001", name="web$(id)",
                    compute_resource=node1, state=status.SERVER_RUNNING, vcpus=2, memory_mib=512)
    server.disks.append(Disk(target="vda", path="/var/lib/libvirt/images/web.qcow2",
                             format="qcow2", storage_type=status.STORAGE_FILE_QCOW2,
                             virtual_size=2 * 1024 ** 3, allocation=300 * 1024 ** 2))
    db.session.add_all([block, server, IpAddress(block=block, address="10.78.1.10", server=server)])
    db.session.commit()
    db.session.expunge_all()
    server = db.session.scalar(db.select(Server).filter_by(name="web$(id)"))
    assert server.compute_resource.name == "node1"
    assert server.disks[0].virtual_size == 2 * 1024 ** 3  # needs BIGINT on PostgreSQL
    assert server.disk_size == 2 * 1024 ** 3
    assert [ip.address for ip in server.ip_addresses] == ["10.78.1.10"]
    assert [r.name for r in server.ip_addresses[0].block.compute_resources] == ["node1", "node2"]


def test_it_records_a_migration_group_with_tasks_and_a_timeline(app_context):
    source, destination = make_resource("node1"), make_resource("node2")
    user = User(username="bob", role=status.ROLE_OPERATOR, password_hash="x")
    server = Server(uuid="6f0d7d5e-0000-4000-8000-000000000002", name="db", compute_resource=source)
    group = MigrationGroup(created_by=user, options={"mode": status.MODE_LIVE, "preserve_ip": True,
                                                     "destination": 2})
    task = MigrationTask(group=group, server=server, source=source, destination=destination,
                         progress={"percent": 40}, result={"downtime_ms": 120})
    task.events.append(TaskEvent(kind="preflight", message="all checks passed", data={"checks": 9}))
    db.session.add(group)
    db.session.commit()
    db.session.expunge_all()
    task = db.session.scalar(db.select(MigrationTask))
    assert task.group.options["mode"] == "live"
    assert task.source.name == "node1" and task.destination.name == "node2"
    assert task.events[0].data == {"checks": 9}
    assert task.status == status.MIGRATION_PENDING and task.cancel_requested is False


def test_it_keeps_only_the_hash_of_an_api_token(app_context):
    user = User(username="alice", role=status.ROLE_ADMIN)
    user.set_password("pw")
    token, plaintext = ApiToken.issue(user, "ci")
    db.session.add(token)
    db.session.commit()
    stored = db.session.scalar(db.select(ApiToken))
    assert plaintext not in (stored.token_hash, stored.prefix)
    assert stored.token_hash == ApiToken.hash(plaintext)
    assert user.check_password("pw") and not user.check_password("nope")


def test_it_orders_roles(app_context):
    viewer = User(username="v", role=status.ROLE_VIEWER)
    admin = User(username="a", role=status.ROLE_ADMIN)
    assert admin.has_role(status.ROLE_OPERATOR) and not viewer.has_role(status.ROLE_OPERATOR)


def test_it_stores_jobs_and_audit_entries(app_context):
    db.session.add_all([Job(name="sync_resource", args={"resource_id": 1}),
                        AuditEntry(action="resource.add", target="compute_resource:node1",
                                   detail={"host": "10.0.0.1"})])
    db.session.commit()
    assert db.session.scalar(db.select(Job)).status == status.JOB_PENDING
    assert db.session.scalar(db.select(AuditEntry)).detail == {"host": "10.0.0.1"}

"""Compute resources: add (pinning the host key), test connection, refusing a changed key."""
import pytest

from app import status
from app.extensions import db
from app.infra.ssh import HostKeyMismatch, fetch_host_key
from app.models import AuditEntry, ComputeResource, Job
from app.services import resources

pytestmark = pytest.mark.lab


def add(app, lab, name="node1", **kwargs):
    """Register a lab node; returns its id."""
    node = lab.node(name)
    with app.app_context():
        return resources.add(name, node["address"], node["user"], lab.status["ssh_key"],
                             node["port"], **kwargs).id


def test_it_pins_the_host_key_seen_on_first_contact(app, lab):
    resource_id = add(app, lab)
    with app.app_context():
        resource = db.session.get(ComputeResource, resource_id)
        assert resource.host_key_fingerprint == lab.node("node1")["host_key_fingerprint"]
        assert resource.host_key.startswith("ssh-")
        assert db.session.scalar(db.select(AuditEntry).filter_by(action="resource.add"))


def test_it_tests_the_connection_over_ssh_and_libvirt(app, lab):
    resource_id = add(app, lab)
    with app.app_context():
        result = resources.test_connection(resource_id)
    assert result["libvirt_version"] == "9.0.0" and result["kernel"]


def test_it_refuses_a_changed_host_key_over_ssh_and_libvirt(app, lab):
    resource_id = add(app, lab)
    # node1 "was replaced": the key pinned for it no longer matches what answers there.
    other_key, _ = fetch_host_key(lab.node("node2")["address"], 22)
    with app.app_context():
        resource = db.session.get(ComputeResource, resource_id)
        resource.host_key = other_key
        db.session.commit()
        with pytest.raises(HostKeyMismatch, match="refusing to connect"):
            with resources.open_ssh(resource):
                pass
        with pytest.raises(HostKeyMismatch, match="libvirt refused"):
            with resources.open_libvirt(resource):
                pass
        with pytest.raises(HostKeyMismatch):
            resources.test_connection(resource_id)
        resource = db.session.get(ComputeResource, resource_id)
        assert resource.status == status.RESOURCE_UNREACHABLE
        assert "refusing to connect" in resource.status_reason


def test_it_refuses_to_pin_a_key_other_than_the_expected_fingerprint(app, lab):
    with pytest.raises(HostKeyMismatch, match="not the expected"):
        add(app, lab, expect_fingerprint=lab.node("node2")["host_key_fingerprint"])


def test_it_adds_a_resource_from_the_cli_and_prints_the_fingerprint(app, lab, runner):
    node = lab.node("node3")
    result = runner.invoke(args=["resources", "add", "node3", "--host", node["address"],
                                 "--port", str(node["port"]), "--user", node["user"],
                                 "--key", lab.status["ssh_key"], "--storage-tag", "ssd"])
    assert result.exit_code == 0, result.output
    assert node["host_key_fingerprint"] in result.output
    result = runner.invoke(args=["resources", "add", "node3", "--host", node["address"],
                                 "--key", lab.status["ssh_key"]])
    assert result.exit_code == 1 and "already exists" in result.output


def test_it_adds_a_resource_from_the_form_and_shows_the_pinned_key(app, lab, client, alice, login,
                                                                   redis_conn):
    node = lab.node("node2")
    login(client, "alice")
    response = client.post("/resources/new", data={
        "name": "node2", "host": node["address"], "port": node["port"], "user": node["user"],
        "key_path": lab.status["ssh_key"], "storage_tags": "ssd, hdd"}, follow_redirects=True)
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and node["host_key_fingerprint"] in page
    with app.app_context():
        resource = db.session.scalar(db.select(ComputeResource).filter_by(name="node2"))
        assert resource.storage_tags == ["hdd", "ssd"]
        assert db.session.scalar(db.select(Job)).name == "sync_resource"  # first sync queued


def test_it_runs_test_connection_as_a_job_from_the_button(app, lab, client, bob, login, redis_conn,
                                                          work):
    resource_id = add(app, lab)
    login(client, "bob")
    assert client.post(f"/resources/{resource_id}/test").status_code == 200
    work()
    with app.app_context():
        job = db.session.scalar(db.select(Job))
        assert job.status == status.JOB_FINISHED, job.error
        assert job.result["host_key_fingerprint"] == lab.node("node1")["host_key_fingerprint"]

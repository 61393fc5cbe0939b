"""Transfer TLS without a node: Ferry's CA, node certificates, the choice of TLS, the preflight
check, the live migration flag, the CLI and the compute resource's page.

Installing certificates over SSH and moving with them run on the lab (tests/lab/test_tls.py).
"""
import datetime as dt
import os
import stat

import libvirt

from app.extensions import db
from app.infra import migration as mig
from app.infra import pki
from app.models import AuditEntry, ComputeResource
from app.services import certificates
from app.services import preflight_checks as checks

VALID = {"tls": {"valid": True, "reason": "valid until 2028-01-01", "not_after": "2028-01-01"}}


def test_it_issues_a_certificate_that_names_the_node_and_chains_to_the_ca():
    ca_key, ca_cert = pki.create_ca()
    files = pki.issue(ca_key, ca_cert, "node1", "10.77.0.11")
    assert set(files) == set(pki.FILES) and files["ca-cert.pem"] == ca_cert
    assert b"PRIVATE KEY" in files["server-key.pem"] and files["client-cert.pem"] == files["server-cert.pem"]
    assert pki.judge(files["server-cert.pem"], ca_cert, "10.77.0.11").valid
    assert pki.judge(files["server-cert.pem"], ca_cert, "10.77.0.12").reason == "not issued for 10.77.0.12"
    _, other_ca = pki.create_ca()
    assert pki.judge(files["server-cert.pem"], other_ca, "10.77.0.11").reason == "not signed by Ferry's CA"
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=pki.NODE_DAYS + 1)
    assert not pki.judge(files["server-cert.pem"], ca_cert, "10.77.0.11", now=later).valid
    assert pki.judge(b"-----BEGIN CERTIFICATE-----\nAAAA\n", ca_cert, "10.77.0.11").reason == \
        "no readable certificate"  # a node's answer is untrusted text
    by_name = pki.issue(ca_key, ca_cert, "node1", "node1.example")
    assert pki.judge(by_name["server-cert.pem"], ca_cert, "node1.example").valid


def test_it_chooses_tls_from_the_setting_and_both_nodes_certificates():
    assert certificates.use_tls("auto", True, True) is True
    assert certificates.use_tls("auto", False, True) is False
    assert certificates.use_tls("plain", True, True) is False
    assert certificates.use_tls("tls", False, True) is True  # required: fail rather than go in clear


def test_it_fails_the_preflight_when_tls_is_required_and_a_node_has_no_valid_certificate():
    good = checks.ResourceInfo("node1", "active", VALID)
    expired = checks.ResourceInfo("node2", "active", {"tls": {"valid": False, "reason": "expired"}})
    never = checks.ResourceInfo("node3", "active", {})
    required = checks.check_transfer_security(good, expired, "tls")
    assert required.status == checks.FAIL and "node2 (expired)" in required.message
    assert "node1" not in required.message.split("certificate:")[1].split(".")[0]
    assert checks.check_transfer_security(good, never, "tls").status == checks.FAIL
    assert checks.check_transfer_security(good, good, "tls").status == checks.PASS
    auto = checks.check_transfer_security(good, never, "auto")
    assert auto.status == checks.PASS and auto.data["tls"] is False and "in clear" in auto.message
    assert checks.check_transfer_security(good, good, "auto").data["tls"] is True
    assert checks.check_transfer_security(good, good, "plain").data["tls"] is False
    server = checks.ServerInfo("web", "stopped", "node1")
    results = checks.run_checks([server], {"node1": good}, never,
                                checks.MigrationOptions(live=False), {}, transfer_security="tls")
    assert [r.status for r in results if r.name == "transfer_security"] == [checks.FAIL]


def test_it_asks_libvirt_for_tls_only_when_the_move_uses_it():
    assert mig.migration_flags(False, False, tls=True) & libvirt.VIR_MIGRATE_TLS
    assert not mig.migration_flags(False, False) & libvirt.VIR_MIGRATE_TLS


def test_it_creates_the_ca_owner_only_in_the_instance_folder_and_never_replaces_it(app, runner):
    created = runner.invoke(args=["pki", "init"])
    assert created.exit_code == 0, created.output
    key = os.path.join(app.instance_path, certificates.CA_KEY_FILE)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.join(app.instance_path, certificates.CA_CERT_FILE)).st_mode) == 0o600
    before = open(key, "rb").read()
    again = runner.invoke(args=["pki", "init"])
    assert again.exit_code == 1 and "exists already" in again.output
    assert open(key, "rb").read() == before


def test_it_refuses_to_issue_before_the_ca_exists_and_changes_nothing(app, runner):
    with app.app_context():
        db.session.add(ComputeResource(name="node1", host="10.77.0.11", key_path="/k"))
        db.session.commit()
    result = runner.invoke(args=["pki", "issue", "node1"])
    assert result.exit_code == 1 and "pki init" in result.output
    with app.app_context():
        assert db.session.scalar(db.select(ComputeResource)).facts in (None, {})
        assert db.session.scalar(db.select(AuditEntry).filter_by(action="pki.issue")) is None


def test_it_shows_the_certificate_state_on_the_compute_resource_page(app, client, alice, login):
    with app.app_context():
        node = ComputeResource(name="node1", host="10.77.0.11", key_path="/k", facts=VALID)
        bare = ComputeResource(name="node2", host="10.77.0.12", key_path="/k", facts={})
        db.session.add_all([node, bare])
        db.session.commit()
        ids = node.id, bare.id
    login(client, "alice")
    page = client.get(f"/resources/{ids[0]}").get_data(as_text=True)
    assert "certificate valid (valid until 2028-01-01); setting: auto" in page
    assert "no valid certificate" in client.get(f"/resources/{ids[1]}").get_data(as_text=True)

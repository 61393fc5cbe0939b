"""An unauthenticated scan of every route: nothing answers with data or acts without a login.

The scan walks `app.url_map` itself, so a route added tomorrow is scanned
tomorrow: every rule, every HTTP method, URL parameters filled with ids that
exist in a seeded database, as a plain browser, as htmx and with a made-up
bearer token. Each answer must be a redirect to the login page, a 4xx that
refuses, or one of the deliberately public URLs; no answer may carry a name or
address from the inventory, and the database must be exactly as it was (but
for the record of the failed logins the scan itself tried). Once with CSRF
checks on, as in production, and once off, so that a POST route is seen to need
a login for itself and not only to miss a CSRF token.

Public on purpose: the login page, static files, /healthz (says only "ok" or
which part fails), /metrics (counts only, no name or address: the exporter
convention; put it behind the proxy if even counts matter) and the API's
OpenAPI document. The webhook needs its source's token.
"""
from urllib.parse import urlsplit

import pytest
from flask import url_for

from app import status
from app.extensions import db
from app.models import (AuditEntry, ComputeResource, Disk, Evacuation, Job, MigrationGroup,
                        MigrationTask, Server, TaskEvent, WebhookEvent, WebhookSource)

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
PUBLIC = {"auth.login", "static", "observability.healthz", "observability.metrics", "api.openapi"}
REFUSALS = {400, 401, 403, 404, 405, 429}
# Names and addresses only the seeded rows carry: none may appear in an anonymous answer.
MARKERS = ("scannode-a7", "scannode-b8", "127.0.0.77", "scanserver-q3",
           "0000cafe-0000-4000-8000-00000000beef", "scanhook-z9", "/srv/scan-disk-k1.qcow2")
# The login form's own record of a wrong password: the one write an anonymous POST may cause.
FAILED_LOGIN = ("user.login_failed", "user.login_throttled")


def seed():
    """One of everything a URL can name; returns {URL argument: value}."""
    source_node = ComputeResource(name="scannode-a7", host="127.0.0.77", port=1,
                                  key_path="/nonexistent", storage_tags=["ssd"])
    target_node = ComputeResource(name="scannode-b8", host="127.0.0.78", port=1,
                                  key_path="/nonexistent")
    server = Server(uuid="0000cafe-0000-4000-8000-00000000beef", name="scanserver-q3",
                    compute_resource=source_node, state=status.SERVER_RUNNING, vcpus=1,
                    memory_mib=256,
                    disks=[Disk(target="vda", path="/srv/scan-disk-k1.qcow2", format="qcow2",
                                storage_type=status.STORAGE_FILE_QCOW2, virtual_size=2**30)])
    group = MigrationGroup(status=status.MIGRATION_RUNNING, options={"mode": "live"})
    task = MigrationTask(group=group, server=server, source_id=None, destination_id=None,
                         mode="live", status=status.MIGRATION_RUNNING)
    evacuation = Evacuation(compute_resource=source_node, plan={
        "moves": [{"server": "scanserver-q3", "destination": "scannode-b8"}], "unplaced": []})
    source = WebhookSource(name="scanhook-z9", kind="generic", token_hash="0" * 64)
    db.session.add_all([source_node, target_node, server, group, task, evacuation, source])
    db.session.flush()
    task.source_id, task.destination_id = source_node.id, target_node.id
    job = Job(name="sync_resource", args={"resource_id": source_node.id},
              result={"resource": "scannode-a7"})
    db.session.add_all([job, TaskEvent(task=task, kind="note", message="on scannode-a7"),
                        WebhookEvent(source=source, action=status.WEBHOOK_PLANNED,
                                     host="scannode-a7", compute_resource=source_node,
                                     evacuation=evacuation, reason="scannode-a7 is down")])
    db.session.commit()
    return {"resource_id": source_node.id, "server_id": server.id, "group_id": group.id,
            "task_id": task.id, "evacuation_id": evacuation.id, "job_id": job.id,
            "name": source.name, "filename": "app.css"}


def snapshot():
    """Every row of every table, to compare before and after the scan."""
    rows = {table.name: db.select(table) for table in db.metadata.sorted_tables}
    rows[AuditEntry.__tablename__] = db.select(AuditEntry.__table__).where(
        AuditEntry.action.not_in(FAILED_LOGIN))
    return {name: sorted(map(repr, db.session.execute(query).all()))
            for name, query in rows.items()}


def url_of(rule, values):
    """The rule's URL with its arguments filled; a new argument name defaults to id 1."""
    # A fresh database numbers every table's first row 1, so an unknown <int:…_id>
    # still names a row that exists (the seeded user, a token...).
    args = {name: values.get(name, 1 if "id" in name else "scan") for name in rule.arguments}
    return url_for(rule.endpoint, **args)


def bodies_for(path, ids):
    """What a POST could carry to make a careless route act: JSON for machines, a form else."""
    fields = {"server_ids": [ids["server_id"]], "destination_id": ids["resource_id"],
              "resource_id": ids["resource_id"], "acknowledge_warnings": True, "live": True,
              "name": "scan-new", "host": "127.0.0.79", "username": "alice",
              "password": "wrong password", "maintenance": "on", "confirm": "yes"}
    if path.startswith(("/api/", "/hooks/")):
        return {"json": fields}
    return {"data": {k: (v[0] if isinstance(v, list) else str(v)) for k, v in fields.items()}}


VARIANTS = {"browser": {}, "htmx": {"HX-Request": "true"},
            "made-up token": {"Authorization": "Bearer fer_madeup"}}


@pytest.fixture(params=["csrf on", "csrf off"])
def scan_app(request, app, alice, redis_conn):
    """The app with a user to sign in as and the rows seeded; CSRF checks on, then off."""
    app.config["WTF_CSRF_ENABLED"] = request.param == "csrf on"
    with app.app_context():
        ids = seed()
    return app, ids


def test_it_answers_no_route_with_data_or_an_action_without_a_login(scan_app):
    app, ids = scan_app
    with app.test_request_context():
        rules = [r for r in app.url_map.iter_rules()]
        login_path = url_for("auth.login")
        targets = [(rule, url_of(rule, ids)) for rule in rules]
    with app.app_context():
        before = snapshot()
    assert len(rules) > 40  # the walk saw the app, not an empty map

    problems, public_seen = [], set()
    for rule, path in targets:
        for method in METHODS:
            for variant, headers in VARIANTS.items():
                client = app.test_client()
                extra = bodies_for(path, ids) if method in ("POST", "PUT", "PATCH") else {}
                answer = client.open(path, method=method, headers=headers, **extra)
                text = answer.get_data(as_text=True)
                where = f"{method} {path} ({variant}) -> {answer.status_code}"
                leaked = [m for m in MARKERS if m in text]
                if leaked:
                    problems.append(f"{where} shows {leaked}")
                if answer.status_code in (301, 302, 303, 307, 308):
                    if urlsplit(answer.location).path != login_path:
                        problems.append(f"{where} redirects to {answer.location}")
                elif answer.status_code in REFUSALS:
                    pass
                elif answer.status_code == 200 and method == "OPTIONS" and not text:
                    pass  # Flask's automatic answer: the allowed methods, nothing else
                elif answer.status_code == 200 and rule.endpoint in PUBLIC:
                    public_seen.add(rule.endpoint)
                else:
                    problems.append(f"{where} answers an anonymous caller")

    assert problems == []
    assert public_seen == PUBLIC
    with app.app_context():
        assert snapshot() == before

"""/api/v1: every route, every role, one error shape, and the OpenAPI document they all match.

Every response these tests receive is validated against /api/v1/openapi.json by
schemathesis's OpenAPI validator (`call`), and `test_it_survives_fuzzing`
lets schemathesis generate requests for every operation and check that none
answers 5xx, undocumented statuses or bodies off-schema. Runs on SQLite and
PostgreSQL. No node is reached: the inventory is written into the database
(tests/fixtures/rack.py) and what would probe a node meets loopback port 1.
"""
import re

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.transport import Response
from schemathesis.generation.modes import GenerationMode
from werkzeug.test import EnvironBuilder, TestResponse

from app import status
from app.api.openapi import document
from app.extensions import db
from app.models import (ApiToken, ComputeResource, Evacuation, Job, MigrationGroup,
                        MigrationTask, WebhookEvent, WebhookSource)
from tests.fixtures.rack import rack  # noqa: F401 - a fixture

PREFIX = "/api/v1"
SCHEMA = schemathesis.openapi.from_dict(document())


@pytest.fixture
def database_url(db_url):
    return db_url


@pytest.fixture
def tokens(app, runner, alice, bob, charlie):
    """An API token per role, each issued by `flask users token`."""
    issued = {}
    for role, name in (("admin", "alice"), ("operator", "bob"), ("viewer", "charlie")):
        result = runner.invoke(args=["users", "token", name, "--name", "tests"])
        assert result.exit_code == 0, result.output
        issued[role] = result.output.strip().splitlines()[-1]
    return issued


@pytest.fixture
def call(client, tokens):
    """`call(method, path, role="viewer", json=None)`: a request whose answer must match the document."""
    def request(method, path, role="viewer", json=None, **kwargs):
        headers = {"Authorization": f"Bearer {tokens[role]}"} if role else {}
        response = client.open(PREFIX + path, method=method, headers=headers, json=json, **kwargs)
        operation = SCHEMA.find_operation_by_path(method, path.split("?")[0])
        assert operation is not None, f"{method} {path} is not in the OpenAPI document"
        SCHEMA.validate_response(operation, Response.from_any(response))
        assert str(response.status_code) in operation.definition.raw["responses"], \
            f"{method} {path} answered {response.status_code}, which the document does not list"
        return response
    return request


def error_of(response):
    body = response.get_json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"])
    return body["error"]["code"]


# --- the document, tokens, roles -------------------------------------------------------


def _api_routes(app):
    """(method, OpenAPI path) for every route the app serves under /api/v1."""
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(PREFIX) and rule.endpoint != "api.openapi":
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule[len(PREFIX):])
            routes |= {(m, path) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return routes


def _documented():
    return {(m.upper(), p) for p, item in document()["paths"].items() for m in item}


def test_it_serves_an_openapi_document_that_lists_exactly_the_routes(app, client):
    answer = client.get(PREFIX + "/openapi.json")

    assert answer.status_code == 200 and answer.get_json() == document()
    assert _api_routes(app) == _documented()


def test_it_would_catch_a_body_off_the_document():
    wrong = TestResponse(['{"username": 7}'], "200 OK", {"Content-Type": "application/json"},
                         request=EnvironBuilder(PREFIX + "/me").get_request())
    with pytest.raises(BaseExceptionGroup) as failures:  # one failure per violation
        SCHEMA.validate_response(SCHEMA.find_operation_by_path("GET", "/me"),
                                 Response.from_any(wrong))
    assert any('7 is not of type "string"' in str(e) for e in failures.value.exceptions)


def _concrete(path):
    return re.sub(r"\{\w+\}", "1", path)


@pytest.mark.parametrize("method,path", sorted(_documented()))
def test_it_needs_a_token_on_every_route(call, rack, method, path):
    missing = call(method, _concrete(path), role=None)
    assert missing.status_code == 401 and error_of(missing) == "unauthorized"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")


def test_it_answers_a_wrong_token_with_401(client, tokens):
    answer = client.get(PREFIX + "/me", headers={"Authorization": "Bearer fry_not-a-token"})
    assert answer.status_code == 401 and error_of(answer) == "invalid_token"


def test_it_takes_no_browser_session_for_a_token(client, login, alice):
    login(client, "alice")
    assert client.get(PREFIX + "/me").status_code == 401


ROLE_OF = {(m.upper(), p): op["summary"] for p, item in document()["paths"].items()
           for m, op in item.items()}
WRITES = sorted(k for k in _documented() if k[0] == "POST")


@pytest.mark.parametrize("method,path", WRITES)
def test_it_lets_a_viewer_change_nothing(call, rack, method, path):
    answer = call(method, _concrete(path), role="viewer", json={})
    assert answer.status_code == 403 and error_of(answer) == "forbidden"


ADMIN_ONLY = sorted(k for k in _documented() if "(admin" in ROLE_OF[k])


def test_some_routes_are_for_admins_only():
    assert ("GET", "/webhook-sources") in ADMIN_ONLY


@pytest.mark.parametrize("method,path", ADMIN_ONLY)
def test_it_keeps_admin_routes_from_operators(call, rack, method, path):
    kwargs = {"json": {"on": True}} if method == "POST" else {}
    assert call(method, _concrete(path), role="operator", **kwargs).status_code == 403


def test_it_says_who_the_token_acts_as_and_records_its_use(app, call):
    assert call("GET", "/me", role="operator").get_json() == {"username": "bob",
                                                              "role": "operator"}
    with app.app_context():
        row = db.session.scalar(db.select(ApiToken).join(ApiToken.user).filter_by(username="bob"))
        assert row.last_used_at is not None


def test_it_stores_only_the_hash_of_a_cli_issued_token(app, runner, alice):
    output = runner.invoke(args=["users", "token", "alice"]).output
    plaintext = output.strip().splitlines()[-1]
    with app.app_context():
        row = db.session.scalar(db.select(ApiToken))
        assert row.token_hash == ApiToken.hash(plaintext) and plaintext not in row.token_hash
    assert runner.invoke(args=["users", "token", "nobody"]).exit_code != 0


# --- errors ---------------------------------------------------------------------------


def test_it_answers_unknown_urls_and_methods_in_the_error_shape(client, tokens):
    headers = {"Authorization": f"Bearer {tokens['admin']}"}
    missing = client.get(PREFIX + "/no-such-thing", headers=headers)
    assert missing.status_code == 404 and error_of(missing) == "not_found"
    wrong = client.get(PREFIX + "/sync", headers=headers)
    assert wrong.status_code == 405 and error_of(wrong) == "method_not_allowed"
    posted = client.post(PREFIX + "/no-such-thing", headers=headers)  # no CSRF dance for tokens
    assert posted.status_code == 404


def test_it_refuses_a_body_that_is_not_a_json_object_with_400(call, rack):
    answer = call("POST", "/preflight", role="operator", data="[1, 2]",
                  content_type="application/json")
    assert answer.status_code == 400 and error_of(answer) == "bad_request"


# --- compute resources, servers, sync ---------------------------------------------------


def test_it_lists_and_gets_compute_resources(call, rack):
    nodes, _ = rack
    listed = call("GET", "/compute-resources").get_json()
    assert [r["name"] for r in listed["items"]] == ["node1", "node2", "node3"]
    assert listed["total"] == 3 and listed["items"][0]["server_count"] == 3
    assert "key_path" not in listed["items"][0]

    one = call("GET", f"/compute-resources/{nodes['node2']}").get_json()
    assert one["name"] == "node2" and one["memory_free_mib"] == 4000
    assert call("GET", "/compute-resources/999").status_code == 404
    assert call("GET", "/compute-resources?status=maintenance").get_json()["total"] == 0
    assert call("GET", "/compute-resources?limit=1&offset=1").get_json()["items"][0]["name"] == \
        "node2"
    assert call("GET", "/compute-resources?limit=0").status_code == 400


def test_it_lets_an_operator_switch_maintenance(app, call, rack):
    nodes, _ = rack
    on = call("POST", f"/compute-resources/{nodes['node1']}/maintenance", role="operator",
              json={"on": True})
    assert on.status_code == 200 and on.get_json()["status"] == status.RESOURCE_MAINTENANCE
    off = call("POST", f"/compute-resources/{nodes['node1']}/maintenance", role="operator",
               json={"on": False})
    assert off.get_json()["status"] == status.RESOURCE_ACTIVE
    bad = call("POST", f"/compute-resources/{nodes['node1']}/maintenance", role="operator",
               json={"on": "yes"})
    assert bad.status_code == 400 and "'on'" in bad.get_json()["error"]["message"]


def test_it_lets_an_operator_queue_syncs_and_follow_the_jobs(app, call, rack, redis_conn):
    nodes, _ = rack
    one = call("POST", f"/compute-resources/{nodes['node1']}/sync", role="operator")
    assert one.status_code == 202
    [job] = one.get_json()["jobs"]
    assert job["name"] == "sync_resource" and job["status"] == status.JOB_PENDING

    every = call("POST", "/sync", role="operator")
    assert every.status_code == 202 and len(every.get_json()["jobs"]) == 3
    assert call("GET", f"/jobs/{job['id']}").get_json()["args"] == {"resource_id": nodes["node1"]}
    assert call("GET", "/jobs/999").status_code == 404
    with app.app_context():  # each row was handed to RQ (another test's worker may run it)
        assert [j.rq_id for j in db.session.scalars(db.select(Job).order_by(Job.id))] == [
            f"ferry-job-{i}" for i in range(job["id"], job["id"] + 4)]


def test_it_lists_servers_with_filters_and_gets_one(call, rack):
    nodes, servers = rack
    everything = call("GET", "/servers").get_json()
    assert everything["total"] == 3
    running = call("GET", "/servers?state=running").get_json()["items"]
    assert sorted(s["name"] for s in running) == ["db", "web"]
    assert call("GET", f"/servers?compute_resource_id={nodes['node2']}").get_json()["total"] == 0
    assert [s["name"] for s in call("GET", "/servers?name=co").get_json()["items"]] == ["cold"]
    assert call("GET", "/servers?name=%25").get_json()["total"] == 0  # % is a character, not a wildcard
    assert call("GET", "/servers?compute_resource_id=x").status_code == 400

    web = call("GET", f"/servers/{servers['web']}").get_json()
    assert web["compute_resource"] == "node1" and web["disks"][0]["format"] == "qcow2"
    assert web["ip_addresses"] == ["10.99.1.10"]
    assert call("GET", "/servers/999").status_code == 404


# --- preflight and migration groups -------------------------------------------------------


def test_it_runs_a_preflight_and_stores_nothing(app, call, rack):
    nodes, servers = rack
    answer = call("POST", "/preflight", role="operator",
                  json={"server_ids": [servers["web"]], "destination_id": nodes["node2"]})

    assert answer.status_code == 200
    report = answer.get_json()
    assert report["summary"]["status"] == "fail"  # loopback port 1: nothing answers
    assert any(r["name"] == "reachable" for r in report["results"])
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(MigrationGroup)) == 0


@pytest.mark.parametrize("body,code", [
    ({}, 400),
    ({"server_ids": "web"}, 400),
    ({"server_ids": [True]}, 400),
    ({"server_ids": [1], "live": "yes"}, 400),
    ({"server_ids": [1], "convert_to": "vmdk"}, 400),
    ({"server_ids": [1, 1], "destination_id": 2}, 400),
    ({"server_ids": [1]}, 400),  # no destination
    ({"server_ids": [999], "destination_id": 2}, 404),
    ({"server_ids": [1], "destination_id": 999}, 404),
    ({"server_ids": [1, 3], "destination_id": 2}, 409),  # one running, one stopped
])
def test_it_refuses_a_bad_migration_request_before_storing_anything(app, call, rack, body, code):
    answer = call("POST", "/migration-groups", role="operator", json=body)
    assert answer.status_code == code, answer.get_json()
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(MigrationGroup)) == 0


def test_it_answers_a_group_the_preflight_refuses_with_409_and_its_id(app, call, rack):
    nodes, servers = rack
    answer = call("POST", "/migration-groups", role="operator",
                  json={"server_ids": [servers["web"], servers["db"]],
                        "destination_id": nodes["node2"], "acknowledge_warnings": True})

    assert answer.status_code == 409 and error_of(answer) == "refused"
    assert "Preflight failed" in answer.get_json()["error"]["message"]
    group = call("GET", f"/migration-groups/{answer.get_json()['error']['group']}").get_json()
    assert group["status"] == status.MIGRATION_FAILED and group["created_by"] == "bob"
    assert len(group["tasks"]) == 2


@pytest.fixture
def running_group(app, rack):
    """A group as the engine leaves it mid-run: one task running with progress, one waiting."""
    nodes, servers = rack
    with app.app_context():
        group = MigrationGroup(status=status.MIGRATION_RUNNING, options={"mode": "live"})
        for name, state in (("web", status.MIGRATION_RUNNING), ("db", status.MIGRATION_PENDING)):
            group.tasks.append(MigrationTask(
                server_id=servers[name], source_id=nodes["node1"], destination_id=nodes["node2"],
                mode="live", status=state,
                progress={"percent": 42.0, "data_processed": 1 << 30} if state == "running"
                else None))
        db.session.add(group)
        db.session.commit()
        return group.id, [t.id for t in group.tasks]


def test_it_lists_and_gets_groups_tasks_and_the_report(call, running_group):
    group_id, (running, waiting) = running_group
    listed = call("GET", "/migration-groups").get_json()
    assert [g["id"] for g in listed["items"]] == [group_id] and "tasks" not in listed["items"][0]
    assert call("GET", "/migration-groups?status=finished").get_json()["total"] == 0

    group = call("GET", f"/migration-groups/{group_id}").get_json()
    assert [t["status"] for t in group["tasks"]] == ["running", "pending"]
    report = call("GET", f"/migration-groups/{group_id}/report").get_json()
    assert [t["server"] for t in report["tasks"]] == ["web", "db"]

    task = call("GET", f"/tasks/{running}").get_json()
    assert task["progress"]["percent"] == 42.0 and task["events"] == []
    assert [t["id"] for t in call("GET", "/tasks?status=pending").get_json()["items"]] == [waiting]
    assert call("GET", f"/tasks?group_id={group_id}").get_json()["total"] == 2
    assert call("GET", "/tasks/999").status_code == 404
    assert call("GET", "/migration-groups/999/report").status_code == 404


def test_it_lets_an_operator_cancel_a_task_or_a_whole_group(app, call, running_group):
    group_id, (running, waiting) = running_group

    one = call("POST", f"/tasks/{running}/cancel", role="operator")
    assert one.status_code == 202 and one.get_json()["cancel_requested"] is True
    assert one.get_json()["events"][-1]["kind"] == "cancel-requested"

    every = call("POST", f"/migration-groups/{group_id}/cancel", role="operator")
    assert every.status_code == 202
    assert all(t["cancel_requested"] for t in every.get_json()["tasks"])

    with app.app_context():
        for task in db.session.scalars(db.select(MigrationTask)):
            task.status = status.MIGRATION_CANCELLED
        db.session.commit()
    assert call("POST", f"/tasks/{running}/cancel", role="operator").status_code == 409
    assert call("POST", f"/migration-groups/{group_id}/cancel", role="operator").status_code == 409


# --- evacuations -------------------------------------------------------------------------


def test_it_lets_an_operator_plan_approve_and_return_an_evacuation(app, call, rack):
    nodes, _ = rack
    node1 = nodes["node1"]
    planned = call("POST", f"/compute-resources/{node1}/evacuations", role="operator")
    assert planned.status_code == 201
    evac = planned.get_json()
    assert evac["status"] == status.EVACUATION_PLANNED and len(evac["plan"]["moves"]) == 3
    assert evac["created_by"] == "bob" and evac["origin"] == "user"
    assert call("GET", f"/evacuations?compute_resource_id={node1}").get_json()["total"] == 1
    assert call("GET", f"/evacuations/{evac['id']}").get_json()["plan"] == evac["plan"]

    approved = call("POST", f"/evacuations/{evac['id']}/approve", role="operator")
    assert approved.status_code == 202
    # The rack's nodes answer nowhere, so the group's preflight refuses it: a group was made.
    assert approved.get_json()["group_id"] is not None
    assert approved.get_json()["status"] == status.EVACUATION_FAILED
    with app.app_context():
        assert db.session.get(ComputeResource, node1).status == status.RESOURCE_MAINTENANCE
    again = call("POST", f"/evacuations/{evac['id']}/approve", role="operator")
    assert again.status_code == 409

    in_maintenance = call("POST", f"/compute-resources/{node1}/return", role="operator")
    assert in_maintenance.status_code == 409 and "maintenance" in error_of(in_maintenance) + \
        in_maintenance.get_json()["error"]["message"]
    call("POST", f"/compute-resources/{node1}/maintenance", role="operator", json={"on": False})
    back = call("POST", f"/compute-resources/{node1}/return", role="operator")
    assert back.status_code == 201 and back.get_json()["kind"] == status.EVACUATION_RETURN
    assert back.get_json()["returns_id"] == evac["id"]


def test_it_answers_evacuations_it_cannot_serve_with_404_or_409(call, rack):
    nodes, _ = rack
    assert call("POST", "/compute-resources/999/evacuations", role="operator").status_code == 404
    assert call("POST", "/evacuations/999/approve", role="operator").status_code == 404
    assert call("GET", "/evacuations/999").status_code == 404
    never = call("POST", f"/compute-resources/{nodes['node2']}/return", role="operator")
    assert never.status_code == 409 and "never evacuated" in never.get_json()["error"]["message"]
    bad = call("POST", f"/compute-resources/{nodes['node1']}/evacuations", role="operator",
               json={"live": 1})
    assert bad.status_code == 400


# --- webhooks ----------------------------------------------------------------------------


def test_it_lists_webhook_events_and_shows_sources_only_to_admins(app, call, rack):
    nodes, _ = rack
    with app.app_context():
        source = WebhookSource(name="am", kind="alertmanager", token_hash="0" * 64,
                               allowed_resources=["node1"], allowed_tags=["ssd"],
                               max_starts_per_hour=2)
        db.session.add(source)
        db.session.flush()
        db.session.add_all([
            WebhookEvent(source_id=source.id, action=status.WEBHOOK_PLANNED, host="node1",
                         compute_resource_id=nodes["node1"], alert_status="firing"),
            WebhookEvent(source_id=source.id, action=status.WEBHOOK_DUPLICATE, host="node1"),
            WebhookEvent(action=status.WEBHOOK_IGNORED, reason="Refused with 400")])
        db.session.commit()

    listed = call("GET", "/webhook-events").get_json()
    assert [e["action"] for e in listed["items"]] == ["ignored", "duplicate", "planned"]
    assert call("GET", "/webhook-events?source=am").get_json()["total"] == 2
    assert call("GET", "/webhook-events?action=planned").get_json()["total"] == 1
    assert call("GET", f"/webhook-events?compute_resource_id={nodes['node1']}"
                ).get_json()["total"] == 1

    assert call("GET", "/webhook-sources", role="operator").status_code == 403
    sources = call("GET", "/webhook-sources", role="admin").get_json()["items"]
    assert sources[0]["name"] == "am" and "token_hash" not in sources[0]
    assert sources[0]["allowlist"] == ["node1", "tag:ssd"]
    assert sources[0]["max_starts_per_hour"] == 2 and sources[0]["signature_max_age_s"] == 300


# --- fuzzing --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_it_survives_fuzzing(app, rack, redis_conn, tokens, mode):
    # The live document, loaded through WSGI so every generated request reaches the app.
    # As an admin, so every operation is reached past the role check. Positive cases must
    # get a documented answer that matches its schema; negative ones (wrong types, missing
    # fields, out-of-range ids) must be refused with a 4xx, never a 5xx.
    schema = schemathesis.openapi.from_wsgi(PREFIX + "/openapi.json", app)
    strategy = schema.as_strategy(mode, headers={"Authorization": f"Bearer {tokens['admin']}"})

    @given(case=strategy)
    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def answers_by_the_document(case):
        case.call_and_validate()

    answers_by_the_document()

"""POST /hooks/<name>: real payloads from each monitoring tool, auth, dedup, what Ferry does.

On SQLite and PostgreSQL: the "only once" rules are database rows, and two
Alertmanagers posting at the same instant must race for them on both. No node
is reached: the inventory is written straight into the database (tests/fixtures/rack.py)
and the one test that runs the approval job sees the preflight refuse the
loopback addresses, which is all it needs to prove the group was made.
"""
import hashlib
import hmac
import json
import re
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from app import status
from app.extensions import db
from app.models import (Claim, ComputeResource, Evacuation, IpBlock, Job, WebhookEvent,
                        WebhookSource)
from tests.fixtures.rack import ADDRESSES, add_server, rack  # noqa: F401 - a fixture

FIXTURES = Path(__file__).parents[1] / "fixtures" / "webhooks"


@pytest.fixture
def database_url(db_url):
    return db_url


def payload(name):
    """A recorded payload, with the documentation addresses swapped for the rack's loopback ones."""
    text = (FIXTURES / name).read_text()
    return text.replace("10.0.0.5", ADDRESSES["node1"]).replace("10.0.0.6", ADDRESSES["node2"])


@pytest.fixture
def add_source(runner):
    """`add_source(name, kind, policy, *flags)` runs `flask hooks add` and returns (token, secret)."""
    def add(name, kind, policy="plan", *flags):
        result = runner.invoke(args=["hooks", "add", name, "--kind", kind, "--policy", policy,
                                     *flags])
        assert result.exit_code == 0, result.output
        token = re.search(r"Token \(shown once\): (\S+)", result.output).group(1)
        secret = re.search(r"HMAC secret \(shown once\): (\S+)", result.output)
        return token, secret and secret.group(1)
    return add


def post(client, name, body, token, **headers):
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return client.post(f"/hooks/{name}", data=body, headers=headers,
                       content_type="application/json")


def count(app, model, **where):
    with app.app_context():
        return db.session.scalar(db.select(db.func.count()).select_from(model).filter_by(**where))


def events(app):
    with app.app_context():
        return [(e.action, e.evacuation_id) for e in
                db.session.scalars(db.select(WebhookEvent).order_by(WebhookEvent.id))]


# --- every source: firing → one evacuation, again → none, resolved → none -------------


def _generic_resolved():
    body = json.loads(payload("generic.json"))
    return json.dumps(dict(body, status="resolved"))


SOURCES = [
    ("alertmanager", payload("alertmanager_firing.json"), payload("alertmanager_resolved.json"),
     "node1"),
    ("grafana", payload("grafana_firing.json"), payload("grafana_resolved.json"), "node2"),
    ("zabbix", payload("zabbix_problem.json"), payload("zabbix_recovery.json"), "node1"),
    ("uptime-kuma", payload("uptime_kuma_down.json"), payload("uptime_kuma_up.json"), "node2"),
    ("generic", payload("generic.json"), _generic_resolved(), "node3"),
]


@pytest.mark.parametrize("kind,firing,resolved,node", SOURCES, ids=[s[0] for s in SOURCES])
def test_it_plans_once_for_a_firing_alert_and_never_for_repeats_or_resolved(
        app, client, rack, add_source, kind, firing, resolved, node):
    nodes, _ = rack
    token, _ = add_source("mon", kind)

    first = post(client, "mon", firing, token)
    assert first.status_code == 202, first.get_json()
    answer = first.get_json()
    with app.app_context():
        evac = db.session.get(Evacuation, answer["evacuation"])
        assert evac.compute_resource_id == nodes[node]
        assert evac.status == status.EVACUATION_PLANNED and evac.origin == "webhook:mon"
    assert answer["url"].endswith(f"/evacuations/{evac.id}")
    assert answer["api_url"].endswith(f"/api/v1/evacuations/{evac.id}")
    assert [a["action"] for a in answer["alerts"]] == [status.WEBHOOK_PLANNED]

    again = post(client, "mon", firing, token)
    assert again.status_code == 200
    assert [a["action"] for a in again.get_json()["alerts"]] == [status.WEBHOOK_DUPLICATE]

    gone = post(client, "mon", resolved, token)
    assert gone.status_code == 200
    assert [a["action"] for a in gone.get_json()["alerts"]] == [status.WEBHOOK_RESOLVED]

    assert count(app, Evacuation) == 1
    assert events(app) == [(status.WEBHOOK_PLANNED, evac.id), (status.WEBHOOK_DUPLICATE, None),
                           (status.WEBHOOK_RESOLVED, None)]


def test_it_takes_an_alertmanager_ha_peers_copy_for_a_duplicate(app, client, rack, add_source):
    token, _ = add_source("am", "alertmanager")
    body = json.loads(payload("alertmanager_firing.json"))
    peer = dict(body, externalURL="http://alertmanager-2.example.org:9093")

    assert post(client, "am", json.dumps(body), token).status_code == 202
    copy = post(client, "am", json.dumps(peer), token)

    assert copy.status_code == 200
    assert copy.get_json()["alerts"][0]["action"] == status.WEBHOOK_DUPLICATE
    assert count(app, Evacuation) == 1


@pytest.mark.parametrize("copies", [2, 4])
def test_it_starts_one_evacuation_when_copies_arrive_at_the_same_instant(
        app, rack, add_source, copies):
    # Each thread has its own client, request context and database session: the
    # only thing they share is the database, as two gunicorn workers would.
    token, _ = add_source("am", "alertmanager")
    body = payload("alertmanager_firing.json")
    barrier = threading.Barrier(copies)
    answers = []

    def deliver():
        client = app.test_client()
        barrier.wait()
        answers.append(post(client, "am", body, token).status_code)

    threads = [threading.Thread(target=deliver) for _ in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sorted(answers) == [200] * (copies - 1) + [202]
    assert count(app, Evacuation) == 1
    assert sorted(a for a, _ in events(app)) == sorted(
        [status.WEBHOOK_PLANNED] + [status.WEBHOOK_DUPLICATE] * (copies - 1))
    assert count(app, Claim, kind="webhook-host") == 0  # the host lock was given back


def test_it_acts_on_each_alert_of_a_group_and_reports_each(app, client, rack, add_source):
    token, _ = add_source("am", "alertmanager")
    body = json.loads(payload("alertmanager_two_alerts.json"))

    answer = post(client, "am", json.dumps(body), token).get_json()

    assert len(answer["alerts"]) == len(body["alerts"])
    assert {a["action"] for a in answer["alerts"]} <= set(status.WEBHOOK_ACTIONS)
    assert count(app, WebhookEvent) == len(body["alerts"])


def test_it_answers_200_with_the_reason_for_an_unknown_host(app, client, rack, add_source):
    token, _ = add_source("gen", "generic")
    body = json.dumps({"host": "node9.example.org:22", "status": "firing", "alert": "NodeDown"})

    answer = post(client, "gen", body, token)

    assert answer.status_code == 200
    [alert] = answer.get_json()["alerts"]
    assert alert["action"] == status.WEBHOOK_UNKNOWN_HOST
    assert "node9.example.org" in alert["reason"]
    assert count(app, Evacuation) == 0


def test_it_matches_a_host_by_address_with_the_port_stripped(app, client, rack, add_source):
    nodes, _ = rack
    token, _ = add_source("am", "alertmanager")  # instance 127.0.0.2:9100 is node1's address

    answer = post(client, "am", payload("alertmanager_firing.json"), token).get_json()

    assert answer["alerts"][0]["compute_resource"] == nodes["node1"]


def test_it_uses_the_labels_the_source_names(app, client, rack, add_source):
    nodes, _ = rack
    token, _ = add_source("am", "alertmanager", "plan", "--label", "node")
    body = json.loads(payload("alertmanager_firing.json"))
    body["alerts"][0]["labels"]["node"] = "node3"

    answer = post(client, "am", json.dumps(body), token).get_json()

    assert answer["alerts"][0]["compute_resource"] == nodes["node3"]


def test_it_ignores_a_host_that_is_already_being_evacuated(app, client, rack, add_source):
    nodes, _ = rack
    with app.app_context():
        db.session.add(Evacuation(compute_resource_id=nodes["node1"],
                                  status=status.EVACUATION_RUNNING, plan={}))
        db.session.commit()
    token, _ = add_source("zbx", "zabbix", "evacuate")

    answer = post(client, "zbx", payload("zabbix_problem.json"), token)

    assert answer.status_code == 200
    assert answer.get_json()["alerts"][0]["action"] == status.WEBHOOK_IGNORED
    assert "already being evacuated" in answer.get_json()["alerts"][0]["reason"]
    assert count(app, Evacuation) == 1 and count(app, Job) == 0


def test_it_lets_a_second_alert_about_a_planned_host_wait_for_that_plan(app, client, rack, add_source):
    token, _ = add_source("gen", "generic")
    down = {"host": "node1", "status": "firing", "alert": "NodeDown"}
    disk = {"host": "node1", "status": "firing", "alert": "DiskFailing"}

    assert post(client, "gen", json.dumps(down), token).status_code == 202
    second = post(client, "gen", json.dumps(disk), token)

    assert second.status_code == 200
    assert "waiting for approval" in second.get_json()["alerts"][0]["reason"]
    assert count(app, Evacuation) == 1


def test_it_queues_the_approval_by_the_evacuate_policy_and_the_job_starts_the_group(
        app, client, rack, add_source, redis_conn, work):
    nodes, servers = rack
    token, _ = add_source("zbx", "zabbix", "evacuate")

    answer = post(client, "zbx", payload("zabbix_problem.json"), token)

    assert answer.status_code == 202
    assert answer.get_json()["alerts"][0]["action"] == status.WEBHOOK_EVACUATING
    with app.app_context():
        job = db.session.scalar(db.select(Job))
        assert job.name == "approve_evacuation"
        assert job.args == {"evacuation_id": answer.get_json()["evacuation"]}

    work()  # a real RQ worker runs the approval: maintenance, one group, its preflight

    with app.app_context():
        evac = db.session.get(Evacuation, answer.get_json()["evacuation"])
        assert db.session.get(Job, job.id).status == status.JOB_FINISHED
        assert db.session.get(ComputeResource, nodes["node1"]).status == \
            status.RESOURCE_MAINTENANCE
        assert evac.group is not None
        assert {t.server_id for t in evac.group.tasks} == set(servers.values())
        # The rack's nodes answer on no port, so the preflight refuses the group.
        assert evac.status == status.EVACUATION_FAILED


def test_it_starts_nothing_by_policy_when_the_plan_moves_no_server(
        app, client, rack, add_source):
    nodes, _ = rack
    with app.app_context():
        for name in ("node2", "node3"):
            db.session.get(ComputeResource, nodes[name]).status = status.RESOURCE_MAINTENANCE
        db.session.commit()
    token, _ = add_source("zbx", "zabbix", "evacuate")

    answer = post(client, "zbx", payload("zabbix_problem.json"), token)

    assert answer.get_json()["alerts"][0]["action"] == status.WEBHOOK_PLANNED
    assert "moves no server" in answer.get_json()["alerts"][0]["reason"]
    assert count(app, Job) == 0


# --- auth -----------------------------------------------------------------------------


def test_it_refuses_a_delivery_without_a_token_with_401_and_stores_nothing(
        app, client, rack, add_source):
    add_source("am", "alertmanager")

    answer = post(client, "am", payload("alertmanager_firing.json"), None)

    assert answer.status_code == 401
    assert answer.get_json()["error"]["code"] == "unauthorized"
    assert count(app, WebhookEvent) == 0 and count(app, Evacuation) == 0


@pytest.mark.parametrize("header", ["Bearer fwh_wrong", "Bearer ", "Basic YWxlcnQ6bWFuYWdlcg=="])
def test_it_refuses_a_wrong_token_and_stores_nothing(app, client, rack, add_source, header):
    add_source("am", "alertmanager")

    answer = client.post("/hooks/am", data=payload("alertmanager_firing.json"),
                         headers={"Authorization": header}, content_type="application/json")

    assert answer.status_code in (401, 403)
    assert answer.status_code == (401 if header.startswith("Basic") else 403)
    assert count(app, WebhookEvent) == 0 and count(app, Evacuation) == 0


def test_it_refuses_the_token_of_another_source(app, client, rack, add_source):
    add_source("am", "alertmanager")
    other, _ = add_source("graf", "grafana")

    assert post(client, "am", payload("alertmanager_firing.json"), other).status_code == 403


def _sign(secret, body, timestamp=None):
    message = (f"{timestamp}:".encode() if timestamp else b"") + body.encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def test_it_requires_the_hmac_signature_when_the_source_has_a_secret(
        app, client, rack, add_source):
    token, secret = add_source("graf", "grafana", "plan", "--hmac")
    body = payload("grafana_firing.json")

    unsigned = post(client, "graf", body, token)
    wrong = post(client, "graf", body, token, **{"X-Ferry-Signature": "sha256=" + "0" * 64})
    assert unsigned.status_code == 403 and wrong.status_code == 403
    assert count(app, WebhookEvent) == 0

    signed = post(client, "graf", body, token,
                  **{"X-Ferry-Signature": "sha256=" + _sign(secret, body)})
    assert signed.status_code == 202


def _grafana_headers(secret, body, timestamp):
    return {"X-Grafana-Alerting-Signature": _sign(secret, body, str(timestamp)),
            "X-Grafana-Alerting-Signature-Timestamp": str(timestamp)}


def test_it_checks_grafanas_own_signature_header_with_its_timestamp(
        app, client, rack, add_source):
    token, secret = add_source("graf", "grafana", "plan", "--hmac")
    body = payload("grafana_firing.json")
    now = int(time.time())
    headers = _grafana_headers(secret, body, now)

    assert post(client, "graf", body, token, **headers).status_code == 202
    headers["X-Grafana-Alerting-Signature-Timestamp"] = str(now + 1)  # not what was signed
    assert post(client, "graf", body, token, **headers).status_code == 403


@pytest.mark.parametrize("offset,words", [(-400, "s old"), (3600, "s in the future")])
def test_it_refuses_a_signed_timestamp_outside_the_sources_window(
        app, client, rack, add_source, offset, words):
    token, secret = add_source("graf", "grafana", "plan", "--hmac")
    body = payload("grafana_firing.json")

    # Correctly signed, but with a timestamp from another time: a replayed capture.
    answer = post(client, "graf", body, token,
                  **_grafana_headers(secret, body, int(time.time()) + offset))

    assert answer.status_code == 403
    message = answer.get_json()["error"]["message"]
    assert words in message and "at most 300 s" in message
    assert count(app, WebhookEvent) == 0 and count(app, Evacuation) == 0


def test_it_takes_the_window_the_source_was_given_and_0_turns_the_check_off(
        app, client, runner, rack, add_source):
    token, secret = add_source("graf", "grafana", "plan", "--hmac", "--max-signature-age", "30")
    body = payload("grafana_firing.json")
    a_minute_ago = _grafana_headers(secret, body, int(time.time()) - 60)

    assert post(client, "graf", body, token, **a_minute_ago).status_code == 403
    assert runner.invoke(args=["hooks", "set", "graf", "--max-signature-age", "0"]).exit_code == 0
    assert post(client, "graf", body, token, **a_minute_ago).status_code == 202


def test_it_refuses_a_signed_timestamp_that_is_not_unix_seconds(app, client, rack, add_source):
    token, secret = add_source("graf", "grafana", "plan", "--hmac")
    body = payload("grafana_firing.json")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    answer = post(client, "graf", body, token, **_grafana_headers(secret, body, stamp))

    assert answer.status_code == 403 and "not a Unix time" in answer.get_json()["error"]["message"]


def test_it_refuses_a_disabled_source_until_it_is_enabled_again(
        app, client, runner, rack, add_source):
    token, _ = add_source("am", "alertmanager")
    assert runner.invoke(args=["hooks", "disable", "am"]).exit_code == 0

    refused = post(client, "am", payload("alertmanager_firing.json"), token)
    assert refused.status_code == 403 and "disabled" in refused.get_json()["error"]["message"]
    assert count(app, Evacuation) == 0 and count(app, WebhookEvent) == 0

    assert runner.invoke(args=["hooks", "enable", "am"]).exit_code == 0
    assert post(client, "am", payload("alertmanager_firing.json"), token).status_code == 202


def test_it_answers_an_unknown_source_exactly_like_a_wrong_token(client, rack, add_source):
    # Otherwise a 404 tells whoever probes which source names exist.
    add_source("am", "alertmanager")
    body = payload("alertmanager_firing.json")

    # The last one is the text whose hash stands in for an unknown source's token.
    for token in ("fwh_x", None, "no such webhook source"):
        known, unknown = post(client, "am", body, token), post(client, "nobody", body, token)
        assert unknown.status_code == known.status_code == (403 if token else 401)
        assert unknown.get_data() == known.get_data()
        assert "nobody" not in unknown.get_data(as_text=True)


def test_it_allows_only_post(client, rack, add_source):
    add_source("am", "alertmanager")
    answer = client.get("/hooks/am")
    assert answer.status_code == 405 and answer.get_json()["error"]["code"] == "method_not_allowed"


# --- guardrails: allowlist, hourly start cap ----------------------------------------


def generic(host, alert="NodeDown"):
    return json.dumps({"host": host, "status": "firing", "alert": alert})


def put_servers_on(app, node_id, *names):
    """Give a rack node servers of its own (numbers after the rack's), so its plan moves some."""
    with app.app_context():
        node = db.session.get(ComputeResource, node_id)
        block = db.session.scalar(db.select(IpBlock))
        for i, name in enumerate(names):
            add_server(node, block, 10 + node_id * 10 + i, name, 256, status.SERVER_RUNNING)
        db.session.commit()


def test_it_refuses_a_host_outside_the_sources_allowlist_and_plans_nothing(
        app, client, rack, add_source):
    nodes, _ = rack
    token, _ = add_source("gen", "generic", "evacuate", "--allow", "node2")

    answer = post(client, "gen", generic("node1"), token)

    assert answer.status_code == 200
    [alert] = answer.get_json()["alerts"]
    assert alert["action"] == status.WEBHOOK_REFUSED
    assert alert["compute_resource"] == nodes["node1"]
    assert "node1 is outside what source gen may act on (node2)" in alert["reason"]
    assert count(app, Evacuation) == 0 and count(app, Job) == 0
    assert events(app) == [(status.WEBHOOK_REFUSED, None)]


def test_it_acts_on_a_resource_named_in_the_allowlist_or_carrying_an_allowed_tag(
        app, client, rack, add_source):
    nodes, _ = rack
    with app.app_context():
        db.session.get(ComputeResource, nodes["node3"]).storage_tags = ["ssd", "rack-b"]
        db.session.commit()
    token, _ = add_source("gen", "generic", "plan", "--allow", "node1", "--allow-tag", "rack-b")

    actions = [post(client, "gen", generic(node), token).get_json()["alerts"][0]["action"]
               for node in ("node1", "node2", "node3")]

    assert actions == [status.WEBHOOK_PLANNED, status.WEBHOOK_REFUSED, status.WEBHOOK_PLANNED]


def test_it_starts_no_more_evacuations_per_hour_than_the_cap_and_plans_the_rest(
        app, client, rack, add_source, redis_conn):
    nodes, _ = rack
    put_servers_on(app, nodes["node2"], "mail")
    token, _ = add_source("gen", "generic", "evacuate", "--max-starts-per-hour", "1")

    first = post(client, "gen", generic("node1"), token).get_json()["alerts"][0]
    second = post(client, "gen", generic("node2"), token).get_json()["alerts"][0]

    assert first["action"] == status.WEBHOOK_EVACUATING
    assert second["action"] == status.WEBHOOK_PLANNED
    assert ("did not start it: source gen may start 1 evacuation(s) per hour and has started 1 "
            "in the last hour. Waiting for approval.") in second["reason"]
    with app.app_context():
        assert [j.args["evacuation_id"] for j in db.session.scalars(db.select(Job))] == \
            [first["evacuation"]]
        assert db.session.get(Evacuation, second["evacuation"]).status == \
            status.EVACUATION_PLANNED
        # An hour later the start no longer counts.
        for claim in db.session.scalars(db.select(Claim).filter_by(kind="webhook-start")):
            claim.at -= timedelta(minutes=61)
        db.session.commit()

    later = post(client, "gen", generic("node2", "DiskFailing"), token).get_json()["alerts"][0]
    assert later["action"] == status.WEBHOOK_EVACUATING
    assert count(app, Job) == 2


def test_it_plans_everything_with_a_cap_of_0(app, client, rack, add_source, redis_conn):
    token, _ = add_source("gen", "generic", "evacuate", "--max-starts-per-hour", "0")

    answer = post(client, "gen", generic("node1"), token).get_json()["alerts"][0]

    assert answer["action"] == status.WEBHOOK_PLANNED and "may start 0" in answer["reason"]
    assert count(app, Job) == 0


def test_it_keeps_the_cap_when_alerts_about_two_hosts_arrive_at_the_same_instant(
        app, rack, add_source, redis_conn):
    nodes, _ = rack
    put_servers_on(app, nodes["node2"], "mail")
    token, _ = add_source("gen", "generic", "evacuate", "--max-starts-per-hour", "1")
    barrier = threading.Barrier(2)
    actions = []

    def deliver(host):
        client = app.test_client()
        barrier.wait()
        actions.append(post(client, "gen", generic(host), token).get_json()["alerts"][0]["action"])

    threads = [threading.Thread(target=deliver, args=(host,)) for host in ("node1", "node2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sorted(actions) == [status.WEBHOOK_EVACUATING, status.WEBHOOK_PLANNED]
    assert count(app, Job) == 1 and count(app, Claim, kind="webhook-start") == 1


# --- bad bodies -----------------------------------------------------------------------


@pytest.mark.parametrize("kind,body", [
    ("alertmanager", "not json"),
    ("alertmanager", ""),
    ("alertmanager", "[]"),
    ("alertmanager", json.dumps(dict(json.loads(payload("alertmanager_firing.json")),
                                     version="3"))),
    ("alertmanager", '{"version": "4", "alerts": [{"status": "maybe"}]}'),
    ("grafana", '{"evalMatches": [], "ruleId": 1}'),
    ("zabbix", '{"event_id": "1", "event_value": "7", "host": "node1"}'),
    ("uptime-kuma", '{"heartbeat": {"status": "down"}, "monitor": {"id": 1}}'),
    ("generic", '{"status": "firing", "alert": "x"}'),
    ("generic", b'\xff\xfe'.decode("latin-1")),
])
def test_it_refuses_a_body_the_source_would_not_send_with_400(
        app, client, rack, add_source, kind, body):
    token, _ = add_source("src", kind)

    answer = post(client, "src", body, token)

    assert answer.status_code == 400, answer.get_json()
    assert answer.get_json()["error"]["code"] == "bad_request"
    assert count(app, Evacuation) == 0
    # Kept so a person wiring up the tool can see why it bounces; not an action on a host.
    assert events(app) == [(status.WEBHOOK_IGNORED, None)]


def test_it_refuses_a_body_over_one_mib_with_413(app, client, rack, add_source):
    token, _ = add_source("gen", "generic")
    huge = json.dumps({"host": "node1", "status": "firing", "alert": "x",
                       "summary": "x" * (1024 * 1024)})

    answer = post(client, "gen", huge, token)

    assert answer.status_code == 413 and answer.get_json()["error"]["code"] == "too_large"
    assert count(app, Evacuation) == 0


def test_it_answers_uptime_kumas_test_button_with_200_and_does_nothing(app, client, rack, add_source):
    token, _ = add_source("kuma", "uptime-kuma")
    answer = post(client, "kuma", payload("uptime_kuma_test.json"), token)
    assert answer.status_code == 200 and answer.get_json()["alerts"] == []
    assert events(app) == [(status.WEBHOOK_IGNORED, None)]  # seen, so the test shows in Ferry


# --- the CLI --------------------------------------------------------------------------


def test_it_adds_lists_and_removes_sources_from_the_cli(app, runner, rack, add_source):
    token, _ = add_source("am", "alertmanager", "evacuate", "--hmac", "--label", "node")
    with app.app_context():
        source = db.session.scalar(db.select(WebhookSource))
        assert source.token_hash == hashlib.sha256(token.encode()).hexdigest()
        assert token not in json.dumps([source.name, source.token_hash])
        assert source.host_labels == ["node"] and source.policy == "evacuate"

    listed = runner.invoke(args=["hooks", "list"])
    assert "am\talertmanager\tevacuate\tlabels=node\thmac=yes\tenabled" in listed.output
    assert token not in listed.output

    assert "allow=any\tstarts/h=any\tmax-age=300s" in listed.output

    duplicate = runner.invoke(args=["hooks", "add", "am", "--kind", "generic"])
    assert duplicate.exit_code != 0 and "already exists" in duplicate.output
    assert runner.invoke(args=["hooks", "remove", "am"]).exit_code == 0
    assert count(app, WebhookSource) == 0
    assert runner.invoke(args=["hooks", "remove", "am"]).exit_code != 0


def test_it_sets_and_lists_the_guardrails_from_the_cli(app, runner, rack, add_source):
    add_source("am", "alertmanager", "evacuate", "--allow", "node1", "--allow-tag", "ssd",
               "--max-starts-per-hour", "2", "--max-signature-age", "60")
    listed = runner.invoke(args=["hooks", "list"]).output
    assert "allow=node1,tag:ssd\tstarts/h=2\tmax-age=60s" in listed

    changed = runner.invoke(args=["hooks", "set", "am", "--allow", "node2", "--allow", "node3",
                                  "--no-cap", "--max-signature-age", "0"])
    assert changed.exit_code == 0, changed.output
    listed = runner.invoke(args=["hooks", "list"]).output
    assert "allow=node2,node3,tag:ssd\tstarts/h=any\tmax-age=off" in listed

    assert runner.invoke(args=["hooks", "set", "am", "--allow-any"]).exit_code == 0
    with app.app_context():
        source = db.session.scalar(db.select(WebhookSource))
        assert source.allowlist == [] and source.max_starts_per_hour is None


@pytest.mark.parametrize("args,words", [
    (["hooks", "set", "am", "--allow", "node9"], "no compute resource named node9"),
    (["hooks", "set", "am", "--allow-any", "--allow", "node1"], "--allow-any drops"),
    (["hooks", "set", "am", "--no-cap", "--max-starts-per-hour", "3"], "--no-cap drops"),
    (["hooks", "set", "am"], "nothing to change"),
    (["hooks", "set", "am", "--max-starts-per-hour", "-1"], "-1"),
    (["hooks", "set", "nobody", "--no-cap"], "no webhook source named 'nobody'"),
    (["hooks", "add", "new", "--kind", "generic", "--allow", "node9"], "no compute resource"),
])
def test_it_refuses_bad_guardrails_and_changes_nothing(app, runner, rack, add_source, args, words):
    add_source("am", "alertmanager", "evacuate", "--max-starts-per-hour", "2")

    result = runner.invoke(args=args)

    assert result.exit_code != 0 and words in result.output
    with app.app_context():
        [source] = db.session.scalars(db.select(WebhookSource)).all()
        assert source.allowlist == [] and source.max_starts_per_hour == 2

"""Monitoring payloads → NormalizedAlert, auth helpers, host matching (pure; no app, no I/O but fixture files)."""

import doctest
import hashlib
import hmac
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.webhooks import sources
from app.webhooks.sources import (
    SOURCES,
    BadPayload,
    NormalizedAlert,
    UnknownSource,
    match_host,
    normalize_host,
    parse_body,
    parse_payload,
    stale_timestamp,
    verify_bearer,
    verify_signature,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "webhooks"

RESOURCES = [
    (1, "node1", "10.0.0.5"),
    (2, "node2", "10.0.0.6"),
    (3, "node3", "fd00::12"),
]


def body(name):
    return (FIXTURES / name).read_bytes()


def payload(name):
    return json.loads(body(name))


# --- Alertmanager ---------------------------------------------------------


def test_it_normalizes_an_alertmanager_firing_alert():
    [alert] = parse_body("alertmanager", body("alertmanager_firing.json"))
    assert isinstance(alert, NormalizedAlert)
    assert alert.source == "alertmanager"
    assert alert.status == "firing"
    assert alert.host == "10.0.0.5"
    assert alert.name == "NodeDown"
    assert alert.summary == "Compute resource node1 is down"
    assert alert.starts_at == "2024-05-02T09:52:26.739266876Z"
    assert alert.labels["job"] == "node"
    assert match_host(alert.host, RESOURCES)[0] == 1


def test_it_gives_resolved_a_different_dedup_key_than_firing():
    [firing] = parse_body("alertmanager", body("alertmanager_firing.json"))
    [resolved] = parse_body("alertmanager", body("alertmanager_resolved.json"))
    assert resolved.status == "resolved"
    assert resolved.host == firing.host
    assert resolved.dedup_key != firing.dedup_key


def test_it_gives_an_ha_duplicate_the_same_dedup_key():
    # The second Alertmanager of an HA pair sends the same group; only
    # receiver-side fields such as externalURL differ.
    first = payload("alertmanager_firing.json")
    second = dict(first, externalURL="http://alertmanager-2.example.org:9093")
    [a] = parse_payload("alertmanager", first)
    [b] = parse_payload("alertmanager", second)
    assert a.dedup_key == b.dedup_key


def test_it_gives_a_new_outage_of_the_same_alert_a_new_dedup_key():
    again = payload("alertmanager_firing.json")
    again["alerts"][0]["startsAt"] = "2024-05-03T01:00:00Z"
    [old] = parse_body("alertmanager", body("alertmanager_firing.json"))
    [new] = parse_payload("alertmanager", again)
    assert old.dedup_key != new.dedup_key


def test_it_returns_one_alert_per_alert_in_the_group():
    alerts = parse_body("alertmanager", body("alertmanager_two_alerts.json"))
    assert [a.host for a in alerts] == ["fd00::12", "node3"]
    assert alerts[0].summary == "Filesystem /var/lib/libvirt/images is read-only"
    # Falls back to the description when there is no summary.
    assert alerts[1].summary == "Filesystem /srv/images on node3 was remounted read-only."
    assert alerts[0].dedup_key != alerts[1].dedup_key
    assert [match_host(a.host, RESOURCES)[0] for a in alerts] == [3, 3]


def test_it_tries_the_configured_host_labels_in_order():
    data = payload("alertmanager_firing.json")
    data["alerts"][0]["labels"]["nodename"] = "node2"
    [alert] = parse_payload("alertmanager", data, host_labels=["nodename", "instance"])
    assert alert.host == "node2"
    [alert] = parse_payload("alertmanager", data, host_labels=["missing"])
    assert alert.host is None


def test_it_refuses_an_alertmanager_body_of_another_version():
    data = payload("alertmanager_firing.json")
    data["version"] = "3"
    with pytest.raises(BadPayload, match="version"):
        parse_payload("alertmanager", data)


# --- Grafana --------------------------------------------------------------


def test_it_normalizes_grafana_firing_and_resolved():
    [firing] = parse_body("grafana", body("grafana_firing.json"))
    [resolved] = parse_body("grafana", body("grafana_resolved.json"))
    assert (firing.status, resolved.status) == ("firing", "resolved")
    assert firing.host == resolved.host == "node2"
    assert firing.name == "Hypervisor memory errors"
    assert firing.summary == "ECC errors on node2"
    assert firing.dedup_key != resolved.dedup_key
    assert match_host(firing.host, RESOURCES)[0] == 2


def test_it_refuses_grafana_legacy_alerting_with_a_reason():
    legacy = {"ruleId": 1, "ruleName": "CPU", "state": "alerting", "evalMatches": [], "orgId": 1}
    with pytest.raises(BadPayload, match="legacy"):
        parse_payload("grafana", legacy)


# --- Zabbix ---------------------------------------------------------------


def test_it_normalizes_a_zabbix_problem_and_its_recovery():
    [problem] = parse_body("zabbix", body("zabbix_problem.json"))
    [recovery] = parse_body("zabbix", body("zabbix_recovery.json"))
    assert (problem.status, recovery.status) == ("firing", "resolved")
    assert problem.host == recovery.host == "node1"
    assert problem.name == "Unavailable by ICMP ping"
    assert problem.labels == {"host": "node1", "host_ip": "10.0.0.5", "severity": "5"}
    # The recovery carries numbers where the problem carried strings.
    assert recovery.labels["severity"] == "5"
    assert problem.dedup_key != recovery.dedup_key


def test_it_keys_zabbix_on_the_event_whatever_its_json_type():
    as_text = payload("zabbix_problem.json")
    as_numbers = dict(as_text, event_id=4711, event_value=1)
    assert parse_payload("zabbix", as_text)[0].dedup_key == parse_payload("zabbix", as_numbers)[0].dedup_key


def test_it_falls_back_to_the_zabbix_host_ip():
    data = dict(payload("zabbix_problem.json"), host="")
    [alert] = parse_payload("zabbix", data)
    assert alert.host == "10.0.0.5"


def test_it_refuses_an_unresolved_zabbix_macro():
    data = dict(payload("zabbix_problem.json"), event_value="{EVENT.VALUE}")
    with pytest.raises(BadPayload, match="event_value"):
        parse_payload("zabbix", data)


# --- Uptime Kuma ----------------------------------------------------------


def test_it_normalizes_uptime_kuma_down_and_up():
    [down] = parse_body("uptime-kuma", body("uptime_kuma_down.json"))
    [up] = parse_body("uptime-kuma", body("uptime_kuma_up.json"))
    assert (down.status, up.status) == ("firing", "resolved")
    assert down.host == up.host == "10.0.0.6"
    assert down.name == "node2 ssh"
    assert "Down" in down.summary
    assert down.starts_at == "2024-09-24 23:51:35.527"
    assert down.dedup_key != up.dedup_key
    assert match_host(down.host, RESOURCES)[0] == 2


def test_it_treats_the_uptime_kuma_test_notification_as_no_alert():
    assert parse_body("uptime-kuma", body("uptime_kuma_test.json")) == []


def test_it_ignores_uptime_kuma_pending_and_maintenance():
    for status in (2, 3):
        data = payload("uptime_kuma_down.json")
        data["heartbeat"]["status"] = status
        assert parse_payload("uptime-kuma", data) == []


def test_it_takes_the_uptime_kuma_host_from_the_url_of_http_monitors():
    data = payload("uptime_kuma_down.json")
    data["monitor"].update(hostname=None, type="http", url="https://node1:8006/health")
    [alert] = parse_payload("uptime-kuma", data)
    assert alert.host == "node1"


# --- generic --------------------------------------------------------------


def test_it_normalizes_the_generic_format():
    [alert] = parse_body("generic", body("generic.json"))
    assert alert.status == "firing"
    assert alert.host == "node3"
    assert alert.name == "RaidDegraded"
    assert alert.summary == "md0 lost a member disk"
    assert match_host(alert.host, RESOURCES)[0] == 3


def test_it_keys_generic_alerts_on_id_when_given_else_on_host_and_alert():
    base = payload("generic.json")
    assert parse_payload("generic", base)[0].dedup_key == parse_payload("generic", dict(base, summary="x"))[0].dedup_key
    assert parse_payload("generic", base)[0].dedup_key != parse_payload("generic", dict(base, id="inc-2"))[0].dedup_key
    no_id = {k: v for k, v in base.items() if k != "id"}
    assert parse_payload("generic", no_id)[0].dedup_key == parse_payload("generic", dict(no_id, summary="y"))[0].dedup_key
    assert parse_payload("generic", no_id)[0].dedup_key != parse_payload("generic", dict(no_id, status="resolved"))[0].dedup_key


@pytest.mark.parametrize(
    "data, reason",
    [
        ({"status": "firing", "alert": "x"}, "host"),
        ({"host": "node1", "status": "down", "alert": "x"}, "status"),
        ({"host": "node1", "status": "firing"}, "alert"),
        ({"host": 5, "status": "firing", "alert": "x"}, "string"),
    ],
)
def test_it_says_what_is_wrong_with_a_generic_body(data, reason):
    with pytest.raises(BadPayload, match=reason):
        parse_payload("generic", data)


# --- bad bodies -----------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   ",
        b"not json",
        b"[]",
        b'[{"status": "firing"}]',
        b"null",
        b"42",
        b'"a string"',
        b"\xff\xfe\x00garbage",
        b'{"alerts": "nope", "version": "4"}',
        b'{"alerts": [1, 2], "version": "4"}',
        b'{"alerts": [{"status": "firing", "labels": {"instance": 5}}], "version": "4"}',
        b'{"heartbeat": {"status": "0"}, "monitor": {"id": 1}}',
        b'{"heartbeat": {"status": true}, "monitor": {"id": 1}}',
        b'{"event_id": true, "event_value": 1, "host": "n"}',
        b'{"event_id": 1, "event_value": 1}',
        b'{"event_id": 1e400, "event_value": NaN, "host": "n"}',
        b'{"host": {"a": 1}, "status": "firing", "alert": "x"}',
        b"[" * 100000,
        b'{"event_id": ' + b"9" * 5000 + b', "event_value": 1, "host": "n"}',
        b'{"host": "' + b"a" * 300 + b'", "status": "firing", "alert": "x"}',
        b'{"host": "\\ud800", "status": "firing", "alert": "\\udfff", "id": "\\ud800"}',
        b"{}" + b" " * (1024 * 1024 + 1),
    ],
)
def test_it_refuses_bodies_a_source_does_not_send_with_bad_payload_only(source, raw):
    try:
        result = parse_body(source, raw)
    except BadPayload as exc:
        assert str(exc)  # a reason the 400 answer can carry
    else:
        # A few are legitimately valid for some source (e.g. a lone-surrogate
        # generic alert): then they must come back as alerts.
        assert isinstance(result, list)
        assert all(isinstance(a, NormalizedAlert) for a in result)


def test_it_keeps_huge_strings_bounded():
    data = payload("generic.json")
    data["summary"] = "x" * 100_000
    data["alert"] = "y" * 100_000
    [alert] = parse_payload("generic", data)
    assert len(alert.summary) <= 1000 and len(alert.name) <= 200
    assert len(alert.dedup_key) < 80


def test_it_refuses_an_unknown_source_as_a_routing_error():
    with pytest.raises(UnknownSource):
        parse_body("nagios", b"{}")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=30,
)

# Shapes close to the real ones, so the fuzzer reaches past the first check.
near_miss = st.fixed_dictionaries(
    {},
    optional={
        "version": st.sampled_from(["4", "1", 4]) | json_values,
        "alerts": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "status": st.sampled_from(["firing", "resolved"]) | json_values,
                    "labels": st.dictionaries(st.sampled_from(["instance", "host", "alertname"]), json_values),
                    "annotations": json_values,
                    "startsAt": json_values,
                    "fingerprint": json_values,
                },
            )
            | json_values,
            max_size=3,
        ),
        "groupKey": json_values,
        "heartbeat": st.none()
        | st.fixed_dictionaries({}, optional={"status": st.integers(-1, 4) | json_values, "time": json_values}),
        "monitor": st.none() | st.fixed_dictionaries({}, optional={"id": json_values, "hostname": json_values, "url": json_values}),
        "event_id": json_values,
        "event_value": st.sampled_from(["0", "1", 0, 1]) | json_values,
        "host": st.text(max_size=40) | json_values,
        "host_ip": json_values,
        "status": st.sampled_from(["firing", "resolved"]) | json_values,
        "alert": json_values,
        "id": json_values,
    },
)


_REAL = {
    "alertmanager": ["alertmanager_firing.json", "alertmanager_two_alerts.json"],
    "grafana": ["grafana_firing.json", "grafana_resolved.json"],
    "zabbix": ["zabbix_problem.json", "zabbix_recovery.json"],
    "uptime-kuma": ["uptime_kuma_down.json", "uptime_kuma_test.json"],
    "generic": ["generic.json"],
}


@st.composite
def mutated_real_payload(draw):
    """A real fixture with one value somewhere inside replaced by an arbitrary JSON value."""
    source = draw(st.sampled_from(SOURCES))
    data = payload(draw(st.sampled_from(_REAL[source])))
    node = data
    for _ in range(draw(st.integers(0, 3))):
        children = [k for k, v in (node.items() if isinstance(node, dict) else enumerate(node)) if isinstance(v, (dict, list)) and v]
        if not children:
            break
        node = node[draw(st.sampled_from(children))]
    keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
    if keys:
        node[draw(st.sampled_from(keys))] = draw(json_values)
    return source, data


def _only_alerts_or_bad_payload(call):
    try:
        result = call()
    except BadPayload:
        return
    assert isinstance(result, list)
    for alert in result:
        assert isinstance(alert, NormalizedAlert)
        assert alert.status in ("firing", "resolved")
        assert alert.host is None or isinstance(alert.host, str)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=st.sampled_from(SOURCES), value=json_values | near_miss)
def test_it_turns_any_json_value_into_alerts_or_bad_payload(source, value):
    _only_alerts_or_bad_payload(lambda: parse_payload(source, value))
    raw = json.dumps(value).encode()
    _only_alerts_or_bad_payload(lambda: parse_body(source, raw))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated_real_payload())
def test_it_turns_any_mutation_of_a_real_payload_into_alerts_or_bad_payload(case):
    source, value = case
    _only_alerts_or_bad_payload(lambda: parse_payload(source, value))


@settings(max_examples=300, deadline=None)
@given(source=st.sampled_from(SOURCES), raw=st.binary(max_size=300))
def test_it_turns_any_bytes_into_alerts_or_bad_payload(source, raw):
    _only_alerts_or_bad_payload(lambda: parse_body(source, raw))


# --- hosts ----------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, host",
    [
        ("10.0.0.5:9100", "10.0.0.5"),
        ("[fd00::1]:9100", "fd00::1"),
        ("[fd00::1]", "fd00::1"),
        ("fd00::1", "fd00::1"),
        ("node1:9100", "node1"),
        ("node1", "node1"),
        ("node1.example.org.", "node1.example.org"),
        ("https://node1.example.org:8443/metrics", "node1.example.org"),
        ("", None),
        (None, None),
    ],
)
def test_it_strips_ports_from_hosts(raw, host):
    assert normalize_host(raw) == host


def test_it_matches_hosts_by_name_then_address():
    assert match_host("node1", RESOURCES) == RESOURCES[0]
    assert match_host("NODE2:9100", RESOURCES) == RESOURCES[1]
    assert match_host("10.0.0.6", RESOURCES) == RESOURCES[1]
    assert match_host("[FD00:0::12]:9100", RESOURCES) == RESOURCES[2]
    assert match_host("node9", RESOURCES) is None
    assert match_host(None, RESOURCES) is None
    # A resource literally named like another's address: the name wins.
    tricky = [(7, "x", "10.0.0.9"), (8, "10.0.0.9", "10.0.0.10")]
    assert match_host("10.0.0.9", tricky)[0] == 8


def test_it_prefers_the_exact_case_of_a_name():
    resources = [(1, "Node1", None), (2, "node1", None)]
    assert match_host("node1", resources)[0] == 2
    assert match_host("NODE1", resources)[0] == 1


# --- auth -----------------------------------------------------------------


def test_it_verifies_bearer_tokens():
    assert verify_bearer("Bearer s3cret", "s3cret")
    assert verify_bearer("bearer s3cret", "s3cret")
    assert not verify_bearer("Bearer wrong", "s3cret")
    assert not verify_bearer("Basic s3cret", "s3cret")
    assert not verify_bearer(None, "s3cret")
    assert not verify_bearer("Bearer ", "")
    assert not verify_bearer("Bearer s3cret", None)
    assert not verify_bearer("Bearer ünïcode", "s3cret")


def test_it_verifies_hmac_signatures_with_or_without_a_prefix():
    raw = body("grafana_firing.json")
    digest = hmac.new(b"topsecret", raw, hashlib.sha256).hexdigest()
    assert verify_signature("topsecret", raw, digest)
    assert verify_signature("topsecret", raw, "sha256=" + digest)
    assert verify_signature(b"topsecret", raw, digest.upper())
    assert not verify_signature("topsecret", raw + b" ", digest)
    assert not verify_signature("other", raw, digest)
    assert not verify_signature("topsecret", raw, None)
    assert not verify_signature("", raw, digest)
    assert not verify_signature("topsecret", raw, "sha256=zz\u00e9")


def test_it_verifies_grafanas_timestamped_signature():
    raw = body("grafana_firing.json")
    digest = hmac.new(b"topsecret", b"1714643463:" + raw, hashlib.sha256).hexdigest()
    assert verify_signature("topsecret", raw, digest, timestamp="1714643463")
    assert not verify_signature("topsecret", raw, digest)
    assert not verify_signature("topsecret", raw, digest, timestamp="1714643464")


def test_the_timestamp_window_holds_its_worked_examples():
    result = doctest.testmod(sources.auth)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("stamp", ["", " ", "-5", "+5", "1.5", "١٧١٤٦٤٣٤٦٣", "9" * 13, "0x10"])
def test_it_takes_only_plain_unix_seconds_for_a_signed_timestamp(stamp):
    assert stale_timestamp(stamp, 1714643463, 300) == \
        "the signed timestamp is not a Unix time in seconds"


def test_it_accepts_a_timestamp_at_the_edge_of_the_window():
    assert stale_timestamp("1000", 1300, 300) is None
    assert stale_timestamp("1300", 1000, 300) is None
    assert stale_timestamp("999", 1300, 300) is not None

"""Monitoring payloads → normalized alerts, plus the webhook's auth helpers: one parser module
per monitoring tool (alertmanager, grafana, zabbix, uptime_kuma, generic), what they share
in common.py, host matching in hosts.py, the delivery's checks in auth.py.

Pure and I/O-free: the blueprint (app/webhooks/views.py) reads the request,
calls `parse_body`, and the receiver (app/services/webhooks.py) decides what to
do with each `NormalizedAlert`.

Contract: for ANY body, `parse_body` returns a list of alerts or raises
`BadPayload`; nothing else escapes, so a monitoring tool (or a fuzzer) can
never turn a bad body into a 5xx.
"""
import json

from app.webhooks.sources import alertmanager, generic, grafana, uptime_kuma, zabbix
from app.webhooks.sources.auth import stale_timestamp, verify_bearer, verify_signature  # noqa: F401
from app.webhooks.sources.common import (DEFAULT_HOST_LABELS, FIRING, MAX_BODY_BYTES,  # noqa: F401
                                          MAX_HOST, MAX_NAME, MAX_SUMMARY, RESOLVED, BadPayload,
                                          NormalizedAlert, UnknownSource, json_type)
from app.webhooks.sources.hosts import match_host, normalize_host  # noqa: F401

PARSERS = {
    "alertmanager": alertmanager.parse,
    "grafana": grafana.parse,
    "zabbix": zabbix.parse,
    "uptime-kuma": uptime_kuma.parse,
    "generic": generic.parse,
}
SOURCES = tuple(PARSERS)


def parse_body(source, raw, host_labels=DEFAULT_HOST_LABELS):
    """Decode a raw request body (bytes) and normalize it; raise BadPayload if it is not valid."""
    if source not in SOURCES:
        raise UnknownSource(f"unknown webhook source {source!r}")
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise BadPayload("body must be bytes")
    raw = bytes(raw)
    if len(raw) > MAX_BODY_BYTES:
        raise BadPayload(f"body is larger than {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        raise BadPayload("body is empty; expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadPayload("body is not UTF-8") from None
    try:
        payload = json.loads(text)
    # ValueError covers JSONDecodeError and ints over Python's digit limit;
    # RecursionError comes from absurdly deep nesting.
    except (ValueError, RecursionError):
        raise BadPayload("body is not valid JSON") from None
    return parse_payload(source, payload, host_labels)


def parse_payload(source, payload, host_labels=DEFAULT_HOST_LABELS):
    """Normalize an already-decoded JSON value from `source`; raise BadPayload if it is not valid."""
    try:
        parser = PARSERS[source]
    except (KeyError, TypeError):
        raise UnknownSource(f"unknown webhook source {source!r}") from None
    if isinstance(host_labels, str) or not all(isinstance(x, str) for x in host_labels):
        raise TypeError("host_labels must be a sequence of label names")
    if not isinstance(payload, dict):
        raise BadPayload(f"expected a JSON object, got {json_type(payload)}")
    return parser(source, payload, tuple(host_labels))

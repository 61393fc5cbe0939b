"""Monitoring payloads → normalized alerts, plus the webhook's auth helpers.

Pure and I/O-free: the blueprint (app/webhooks/views.py) reads the request,
calls `parse_body`, and decides what to do with each `NormalizedAlert`.

Contract: for ANY body, `parse_body` returns a list of alerts or raises
`BadPayload`; nothing else escapes, so a monitoring tool (or a fuzzer) can
never turn a bad body into a 5xx.

Formats Ferry documents for the tools that have no fixed payload:

zabbix (a Webhook media type whose script POSTs this JSON; numbers or
strings are both accepted for the numeric fields)::

    {"event_id": "{EVENT.ID}", "event_value": "{EVENT.VALUE}",
     "host": "{HOST.NAME}", "host_ip": "{HOST.IP}",
     "severity": "{EVENT.NSEVERITY}", "name": "{EVENT.NAME}"}

    event_value 1 = problem (firing), 0 = recovery (resolved).

generic (any tool that can POST JSON)::

    {"host": "node1", "status": "firing" | "resolved", "alert": "NodeDown",
     "id": "optional dedup key, e.g. the incident id",
     "summary": "optional text"}
"""

import hashlib
import hmac
import ipaddress
import json
import math
from dataclasses import dataclass, field
from urllib.parse import urlsplit

SOURCES = ("alertmanager", "grafana", "zabbix", "uptime-kuma", "generic")
DEFAULT_HOST_LABELS = ("instance", "host")
FIRING = "firing"
RESOLVED = "resolved"

# Real payloads are a few KiB; Alertmanager's biggest groups stay well under
# this. Anything larger is refused before json.loads spends time on it.
MAX_BODY_BYTES = 1024 * 1024
# Stored and shown in the UI; longer text is cut, not refused.
MAX_NAME = 200
MAX_SUMMARY = 1000
# RFC 1035 limit for a DNS name; a longer "host" is not a host.
MAX_HOST = 253


class BadPayload(ValueError):
    """The body is not what the named source sends; the message says why."""


class UnknownSource(LookupError):
    """The source name is not one of SOURCES (a routing error, not a body error)."""


@dataclass(frozen=True)
class NormalizedAlert:
    """One alert about one host, whatever tool sent it."""

    source: str
    status: str  # FIRING or RESOLVED
    host: str | None  # port stripped; None when the payload names no host
    name: str
    summary: str
    dedup_key: str  # same key = same delivery; store it unique
    starts_at: str | None  # as the source wrote it (formats differ per tool)
    labels: dict = field(default_factory=dict)


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
        parser = _PARSERS[source]
    except (KeyError, TypeError):
        raise UnknownSource(f"unknown webhook source {source!r}") from None
    if isinstance(host_labels, str) or not all(isinstance(x, str) for x in host_labels):
        raise TypeError("host_labels must be a sequence of label names")
    if not isinstance(payload, dict):
        raise BadPayload(f"expected a JSON object, got {_json_type(payload)}")
    return parser(source, payload, tuple(host_labels))


# --- Alertmanager and Grafana (same envelope) ------------------------------


def _parse_alertmanager(source, payload, host_labels):
    version = payload.get("version")
    if version != "4":
        raise BadPayload(
            f"unsupported Alertmanager webhook version {_show(version)}; expected \"4\""
        )
    return _parse_alert_group(source, payload, host_labels)


def _parse_grafana(source, payload, host_labels):
    if "alerts" not in payload and ("evalMatches" in payload or "ruleId" in payload):
        # Grafana's legacy (dashboard) alerting, removed in Grafana 11.
        raise BadPayload(
            "legacy Grafana alerting payload (no alerts list); use a unified alerting contact point"
        )
    return _parse_alert_group(source, payload, host_labels)


def _parse_alert_group(source, payload, host_labels):
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        raise BadPayload(f"'alerts' must be a list, got {_json_type(alerts)}")
    group_key = _opt_str(payload, "groupKey", "payload")
    common_labels = _labels(payload.get("commonLabels"), "commonLabels")
    common_ann = _labels(payload.get("commonAnnotations"), "commonAnnotations")
    out = []
    for i, alert in enumerate(alerts):
        where = f"alerts[{i}]"
        if not isinstance(alert, dict):
            raise BadPayload(f"{where} must be an object, got {_json_type(alert)}")
        status = alert.get("status")
        if status not in (FIRING, RESOLVED):
            raise BadPayload(f"{where}.status must be \"firing\" or \"resolved\", got {_show(status)}")
        labels = _labels(alert.get("labels"), f"{where}.labels")
        annotations = _labels(alert.get("annotations"), f"{where}.annotations")
        starts_at = _opt_str(alert, "startsAt", where)
        fingerprint = _opt_str(alert, "fingerprint", where)
        if fingerprint is None:
            # Very old Alertmanagers omit it; the label set is what it hashes.
            fingerprint = "labels:" + _digest(sorted(labels.items()))
        merged = {**common_labels, **labels}
        raw_host = next((merged[k] for k in host_labels if merged.get(k)), None)
        summary = (
            annotations.get("summary")
            or annotations.get("description")
            or common_ann.get("summary")
            or common_ann.get("description")
            or ""
        )
        out.append(
            NormalizedAlert(
                source=source,
                status=status,
                host=_host_or_bad(raw_host, f"{where} host label"),
                name=_cut(merged.get("alertname") or "", MAX_NAME),
                summary=_cut(summary, MAX_SUMMARY),
                # Alertmanager HA peers each deliver the same notification;
                # these four fields are identical across the copies.
                dedup_key=_key(source, group_key or "", fingerprint, status, starts_at or ""),
                starts_at=starts_at,
                labels=merged,
            )
        )
    return out


# --- Zabbix ------------------------------------------------------------------


def _parse_zabbix(source, payload, host_labels):
    event_id = _scalar(payload, "event_id", "payload", required=True)
    value = _scalar(payload, "event_value", "payload", required=True)
    if value not in ("0", "1"):
        raise BadPayload(f"event_value must be 1 (problem) or 0 (recovery), got {_show(value)}")
    host = _scalar(payload, "host", "payload")
    host_ip = _scalar(payload, "host_ip", "payload")
    severity = _scalar(payload, "severity", "payload")
    name = _scalar(payload, "name", "payload") or ""
    if not host and not host_ip:
        raise BadPayload("payload names no host: set \"host\" ({HOST.NAME}) or \"host_ip\" ({HOST.IP})")
    labels = {k: v for k, v in (("host", host), ("host_ip", host_ip), ("severity", severity)) if v}
    return [
        NormalizedAlert(
            source=source,
            status=FIRING if value == "1" else RESOLVED,
            # The visible name is what a person names the compute resource
            # after; the IP is the fallback when the name is blank.
            host=_host_or_bad(host or host_ip, "host"),
            name=_cut(name, MAX_NAME),
            summary=_cut(name, MAX_SUMMARY),
            # A recovery reuses the problem's {EVENT.ID}; the value tells them apart.
            dedup_key=_key(source, event_id, value),
            starts_at=None,
            labels=labels,
        )
    ]


# --- Uptime Kuma -------------------------------------------------------------

_KUMA_DOWN, _KUMA_UP = 0, 1


def _parse_uptime_kuma(source, payload, host_labels):
    if "heartbeat" not in payload and "monitor" not in payload:
        raise BadPayload("expected Uptime Kuma's {heartbeat, monitor, msg} object")
    heartbeat = payload.get("heartbeat")
    if heartbeat is None:
        # The "Test" button in Uptime Kuma sends heartbeat=null and
        # monitor=null: a valid delivery about no host.
        return []
    if not isinstance(heartbeat, dict):
        raise BadPayload(f"heartbeat must be an object or null, got {_json_type(heartbeat)}")
    monitor = payload.get("monitor")
    if not isinstance(monitor, dict):
        raise BadPayload(f"monitor must be an object, got {_json_type(monitor)}")
    status = heartbeat.get("status")
    if type(status) is not int or status not in (0, 1, 2, 3):
        raise BadPayload(f"heartbeat.status must be 0, 1, 2 or 3, got {_show(status)}")
    if status not in (_KUMA_DOWN, _KUMA_UP):
        # Pending (still retrying) and maintenance say nothing about the
        # host being bad; acting on them would evacuate on a blip.
        return []
    monitor_id = _scalar(monitor, "id", "monitor") or _scalar(heartbeat, "monitorID", "heartbeat")
    if not monitor_id:
        raise BadPayload("monitor.id is missing")
    time = _opt_str(heartbeat, "time", "heartbeat")
    hostname = _opt_str(monitor, "hostname", "monitor")
    url = _opt_str(monitor, "url", "monitor")
    raw_host = hostname or _url_host(url)
    name = _opt_str(monitor, "name", "monitor") or ""
    summary = _opt_str(payload, "msg", "payload") or _opt_str(heartbeat, "msg", "heartbeat") or ""
    return [
        NormalizedAlert(
            source=source,
            status=FIRING if status == _KUMA_DOWN else RESOLVED,
            host=_host_or_bad(raw_host, "monitor hostname"),
            name=_cut(name, MAX_NAME),
            summary=_cut(summary, MAX_SUMMARY),
            dedup_key=_key(source, monitor_id, time or "", str(status)),
            starts_at=time,
            labels={"monitor_id": monitor_id, **({"url": url} if url else {})},
        )
    ]


# --- generic -----------------------------------------------------------------


def _parse_generic(source, payload, host_labels):
    host = _opt_str(payload, "host", "payload")
    if not host:
        raise BadPayload("\"host\" is required (a compute resource's name or address)")
    status = payload.get("status")
    if status not in (FIRING, RESOLVED):
        raise BadPayload(f"\"status\" must be \"firing\" or \"resolved\", got {_show(status)}")
    name = _opt_str(payload, "alert", "payload")
    if not name:
        raise BadPayload("\"alert\" is required (the alert's name)")
    alert_id = _scalar(payload, "id", "payload")
    summary = _opt_str(payload, "summary", "payload") or ""
    # Without an id, every repeat of (host, alert, status) is a duplicate;
    # tools that reopen incidents should send one.
    key_parts = ("id", alert_id, status) if alert_id else ("host", host, name, status)
    return [
        NormalizedAlert(
            source=source,
            status=status,
            host=_host_or_bad(host, "host"),
            name=_cut(name, MAX_NAME),
            summary=_cut(summary, MAX_SUMMARY),
            dedup_key=_key(source, *key_parts),
            starts_at=None,
            labels={"host": host, "alert": name, **({"id": alert_id} if alert_id else {})},
        )
    ]


_PARSERS = {
    "alertmanager": _parse_alertmanager,
    "grafana": _parse_grafana,
    "zabbix": _parse_zabbix,
    "uptime-kuma": _parse_uptime_kuma,
    "generic": _parse_generic,
}


# --- hosts ------------------------------------------------------------------


def normalize_host(value):
    """Strip scheme, port and IPv6 brackets from a host label ("10.0.0.5:9100" → "10.0.0.5"); None if empty."""
    if not isinstance(value, str):
        return None
    host = value.strip()
    if "://" in host:
        host = _url_host(host) or ""
    elif host.startswith("["):
        # "[fd00::1]:9100" or "[fd00::1]"
        end = host.find("]")
        host = host[1:end] if end > 0 else ""
    elif host.count(":") == 1:
        # One colon is host:port; more is a bare IPv6 address.
        host = host.split(":", 1)[0]
    host = host.strip().rstrip(".")
    return host or None


def match_host(alert_host, resources):
    """Return the (id, name, address) resource that `alert_host` names, or None."""
    host = normalize_host(alert_host)
    if host is None:
        return None
    resources = list(resources)
    # Exact name first, then a case-insensitive name, then the address: a
    # name is what a person typed into both tools, an address can be shared
    # by a NAT'd lab.
    for res in resources:
        if _res_name(res) == host:
            return res
    folded = host.casefold()
    for res in resources:
        name = _res_name(res)
        if name is not None and name.casefold() == folded:
            return res
    want = _address_key(host)
    for res in resources:
        addr = normalize_host(res[2]) if len(res) > 2 else None
        if addr is not None and _address_key(addr) == want:
            return res
    return None


# --- auth -------------------------------------------------------------------


def verify_bearer(header_value, expected_token):
    """True if an Authorization header carries `Bearer <expected_token>` (constant-time compare)."""
    if not expected_token or not isinstance(header_value, str):
        # An unset token must never mean "anyone may call".
        return False
    scheme, _, token = header_value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    # compare_digest on str refuses non-ASCII; bytes compare anything.
    return hmac.compare_digest(
        token.strip().encode("utf-8", "surrogatepass"),
        str(expected_token).encode("utf-8", "surrogatepass"),
    )


def verify_signature(secret, raw_body, header_value, timestamp=None):
    """True if `header_value` is the hex HMAC-SHA256 of the body (optional "sha256=" prefix; constant time).

    With Grafana's optional timestamp header the signed text is
    "<timestamp>:<body>"; pass that header's value as `timestamp`.
    """
    if not secret or not isinstance(header_value, str):
        return False
    if isinstance(secret, str):
        secret = secret.encode("utf-8", "surrogatepass")
    if isinstance(raw_body, str):
        raw_body = raw_body.encode("utf-8", "surrogatepass")
    if not isinstance(raw_body, (bytes, bytearray, memoryview)):
        return False
    message = bytes(raw_body)
    if timestamp is not None:
        message = str(timestamp).encode("utf-8", "surrogatepass") + b":" + message
    given = header_value.strip()
    if given[:7].lower() == "sha256=":
        given = given[7:]
    expected = hmac.new(bytes(secret), message, hashlib.sha256).hexdigest()
    return hmac.compare_digest(given.lower().encode("utf-8", "surrogatepass"), expected.encode())


def stale_timestamp(timestamp, now, max_age):
    """Why a signed Unix timestamp (seconds, as Grafana sends it) is refused; None if it is fresh.

    A captured delivery replayed later carries its old timestamp, and the signature
    covers it, so it cannot be renewed without the secret. A clock a little ahead is
    as wrong as one behind: both are bounded by `max_age`; 0 checks nothing.

    >>> stale_timestamp("1000", 1200, 300) is None
    True
    >>> stale_timestamp("1000", 1301, 300)
    'the signed timestamp is 301 s old; this source accepts at most 300 s'
    >>> stale_timestamp("2000", 1000, 300)
    'the signed timestamp is 1000 s in the future; this source accepts at most 300 s'
    >>> stale_timestamp("1e9", 1000, 300)
    'the signed timestamp is not a Unix time in seconds'
    >>> stale_timestamp("5", 10**9, 0) is None
    True
    """
    if not max_age:
        return None
    text = str(timestamp).strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 12):
        return "the signed timestamp is not a Unix time in seconds"
    age = int(now) - int(text)
    if abs(age) <= max_age:
        return None
    when = f"{age} s old" if age > 0 else f"{-age} s in the future"
    return f"the signed timestamp is {when}; this source accepts at most {max_age} s"


# --- helpers ----------------------------------------------------------------


def _json_type(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _show(value):
    """A short, safe rendering of a bad value for an error message."""
    if isinstance(value, str):
        return json.dumps(_cut(value, 40))
    if value is None or isinstance(value, (bool, int, float)) and not _huge(value):
        return json.dumps(value)
    return _json_type(value)


def _huge(value):
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20


def _cut(text, limit):
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _opt_str(obj, key, where):
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise BadPayload(f"{where}.{key} must be a string, got {_json_type(value)}")


def _scalar(obj, key, where, required=False):
    """A string or an integral number as text (Zabbix macros arrive as either); None if absent/empty."""
    value = obj.get(key)
    if isinstance(value, bool):
        raise BadPayload(f"{where}.{key} must be a string or a number, got a boolean")
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not _huge(value):
        value = str(value)
    if isinstance(value, str):
        value = value.strip()
    if value is None or value == "":
        if required:
            raise BadPayload(f"{where}.{key} is required")
        return None
    if not isinstance(value, str):
        raise BadPayload(f"{where}.{key} must be a string or a number, got {_show(value)}")
    return value


def _labels(value, where):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadPayload(f"{where} must be an object, got {_json_type(value)}")
    for key, item in value.items():
        if not isinstance(item, str):
            raise BadPayload(f"{where}[{_show(key)}] must be a string, got {_json_type(item)}")
    return dict(value)


def _host_or_bad(raw, what):
    host = normalize_host(raw)
    if host is not None and len(host) > MAX_HOST:
        raise BadPayload(f"{what} is longer than {MAX_HOST} characters")
    return host


def _url_host(url):
    if not url:
        return None
    try:
        return urlsplit(url.strip()).hostname
    except ValueError:  # e.g. "http://[broken"
        return None


def _res_name(res):
    name = res[1] if len(res) > 1 else None
    return name if isinstance(name, str) else None


def _address_key(host):
    # "FD00:0::1" and "fd00::1" are the same address.
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.casefold()


def _digest(parts):
    # ensure_ascii: JSON may carry lone surrogates that cannot be UTF-8 encoded.
    text = json.dumps(parts, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _key(source, *parts):
    # Fixed length whatever the inputs, so it fits a unique index.
    return f"{source}:{_digest(list(parts))[:40]}"

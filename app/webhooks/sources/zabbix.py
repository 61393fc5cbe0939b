"""Zabbix: a Webhook media type whose script POSTs this JSON (numbers or strings are both
accepted for the numeric fields)::

    {"event_id": "{EVENT.ID}", "event_value": "{EVENT.VALUE}",
     "host": "{HOST.NAME}", "host_ip": "{HOST.IP}",
     "severity": "{EVENT.NSEVERITY}", "name": "{EVENT.NAME}"}

    event_value 1 = problem (firing), 0 = recovery (resolved).
"""
from app.webhooks.sources.common import (FIRING, MAX_NAME, MAX_SUMMARY, RESOLVED, BadPayload,
                                         NormalizedAlert, cut, host_or_bad, key, scalar, show)


def parse(source, payload, host_labels):
    """One Zabbix problem or recovery event."""
    event_id = scalar(payload, "event_id", "payload", required=True)
    value = scalar(payload, "event_value", "payload", required=True)
    if value not in ("0", "1"):
        raise BadPayload(f"event_value must be 1 (problem) or 0 (recovery), got {show(value)}")
    host = scalar(payload, "host", "payload")
    host_ip = scalar(payload, "host_ip", "payload")
    severity = scalar(payload, "severity", "payload")
    name = scalar(payload, "name", "payload") or ""
    if not host and not host_ip:
        raise BadPayload("payload names no host: set \"host\" ({HOST.NAME}) or \"host_ip\" ({HOST.IP})")
    labels = {k: v for k, v in (("host", host), ("host_ip", host_ip), ("severity", severity)) if v}
    return [
        NormalizedAlert(
            source=source,
            status=FIRING if value == "1" else RESOLVED,
            # The visible name is what a person names the compute resource
            # after; the IP is the fallback when the name is blank.
            host=host_or_bad(host or host_ip, "host"),
            name=cut(name, MAX_NAME),
            summary=cut(name, MAX_SUMMARY),
            # A recovery reuses the problem's {EVENT.ID}; the value tells them apart.
            dedup_key=key(source, event_id, value),
            starts_at=None,
            labels=labels,
        )
    ]

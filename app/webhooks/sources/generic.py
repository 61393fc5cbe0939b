"""Any tool that can POST JSON, in Ferry's own shape::

    {"host": "node1", "status": "firing" | "resolved", "alert": "NodeDown",
     "id": "optional dedup key, e.g. the incident id",
     "summary": "optional text"}
"""
from app.webhooks.sources.common import (FIRING, MAX_NAME, MAX_SUMMARY, RESOLVED, BadPayload,
                                         NormalizedAlert, cut, host_or_bad, key, opt_str, scalar,
                                         show)


def parse(source, payload, host_labels):
    """One alert in Ferry's own generic shape."""
    host = opt_str(payload, "host", "payload")
    if not host:
        raise BadPayload("\"host\" is required (a compute resource's name or address)")
    status = payload.get("status")
    if status not in (FIRING, RESOLVED):
        raise BadPayload(f"\"status\" must be \"firing\" or \"resolved\", got {show(status)}")
    name = opt_str(payload, "alert", "payload")
    if not name:
        raise BadPayload("\"alert\" is required (the alert's name)")
    alert_id = scalar(payload, "id", "payload")
    summary = opt_str(payload, "summary", "payload") or ""
    # Without an id, every repeat of (host, alert, status) is a duplicate;
    # tools that reopen incidents should send one.
    key_parts = ("id", alert_id, status) if alert_id else ("host", host, name, status)
    return [
        NormalizedAlert(
            source=source,
            status=status,
            host=host_or_bad(host, "host"),
            name=cut(name, MAX_NAME),
            summary=cut(summary, MAX_SUMMARY),
            dedup_key=key(source, *key_parts),
            starts_at=None,
            labels={"host": host, "alert": name, **({"id": alert_id} if alert_id else {})},
        )
    ]

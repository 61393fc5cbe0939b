"""Uptime Kuma's webhook notification: {heartbeat, monitor, msg}."""
from app.webhooks.sources.common import (FIRING, MAX_NAME, MAX_SUMMARY, RESOLVED, BadPayload,
                                         NormalizedAlert, cut, host_or_bad, json_type, key, opt_str,
                                         scalar, show)
from app.webhooks.sources.hosts import url_host

_KUMA_DOWN, _KUMA_UP = 0, 1


def parse(source, payload, host_labels):
    """One Uptime Kuma heartbeat: down is firing, up is resolved, pending and maintenance nothing."""
    if "heartbeat" not in payload and "monitor" not in payload:
        raise BadPayload("expected Uptime Kuma's {heartbeat, monitor, msg} object")
    heartbeat = payload.get("heartbeat")
    if heartbeat is None:
        # The "Test" button in Uptime Kuma sends heartbeat=null and
        # monitor=null: a valid delivery about no host.
        return []
    if not isinstance(heartbeat, dict):
        raise BadPayload(f"heartbeat must be an object or null, got {json_type(heartbeat)}")
    monitor = payload.get("monitor")
    if not isinstance(monitor, dict):
        raise BadPayload(f"monitor must be an object, got {json_type(monitor)}")
    status = heartbeat.get("status")
    if type(status) is not int or status not in (0, 1, 2, 3):
        raise BadPayload(f"heartbeat.status must be 0, 1, 2 or 3, got {show(status)}")
    if status not in (_KUMA_DOWN, _KUMA_UP):
        # Pending (still retrying) and maintenance say nothing about the
        # host being bad; acting on them would evacuate on a blip.
        return []
    monitor_id = scalar(monitor, "id", "monitor") or scalar(heartbeat, "monitorID", "heartbeat")
    if not monitor_id:
        raise BadPayload("monitor.id is missing")
    time = opt_str(heartbeat, "time", "heartbeat")
    hostname = opt_str(monitor, "hostname", "monitor")
    url = opt_str(monitor, "url", "monitor")
    raw_host = hostname or url_host(url)
    name = opt_str(monitor, "name", "monitor") or ""
    summary = opt_str(payload, "msg", "payload") or opt_str(heartbeat, "msg", "heartbeat") or ""
    return [
        NormalizedAlert(
            source=source,
            status=FIRING if status == _KUMA_DOWN else RESOLVED,
            host=host_or_bad(raw_host, "monitor hostname"),
            name=cut(name, MAX_NAME),
            summary=cut(summary, MAX_SUMMARY),
            dedup_key=key(source, monitor_id, time or "", str(status)),
            starts_at=time,
            labels={"monitor_id": monitor_id, **({"url": url} if url else {})},
        )
    ]

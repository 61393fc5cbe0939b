"""Prometheus Alertmanager's webhook (version 4); Grafana's unified alerting sends the same
envelope (grafana.py)."""
from app.webhooks.sources.common import (FIRING, MAX_NAME, MAX_SUMMARY, RESOLVED, BadPayload,
                                         NormalizedAlert, cut, digest, host_or_bad, json_type, key,
                                         label_map, opt_str, show)


def parse(source, payload, host_labels):
    """Alertmanager's webhook (version 4): one alert per entry of the group."""
    version = payload.get("version")
    if version != "4":
        raise BadPayload(
            f"unsupported Alertmanager webhook version {show(version)}; expected \"4\""
        )
    return parse_alert_group(source, payload, host_labels)


def parse_alert_group(source, payload, host_labels):
    """The alert-group envelope Alertmanager sends and Grafana's unified alerting copies."""
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        raise BadPayload(f"'alerts' must be a list, got {json_type(alerts)}")
    group_key = opt_str(payload, "groupKey", "payload")
    common_labels = label_map(payload.get("commonLabels"), "commonLabels")
    common_ann = label_map(payload.get("commonAnnotations"), "commonAnnotations")
    out = []
    for i, alert in enumerate(alerts):
        where = f"alerts[{i}]"
        if not isinstance(alert, dict):
            raise BadPayload(f"{where} must be an object, got {json_type(alert)}")
        status = alert.get("status")
        if status not in (FIRING, RESOLVED):
            raise BadPayload(f"{where}.status must be \"firing\" or \"resolved\", got {show(status)}")
        labels = label_map(alert.get("labels"), f"{where}.labels")
        annotations = label_map(alert.get("annotations"), f"{where}.annotations")
        starts_at = opt_str(alert, "startsAt", where)
        fingerprint = opt_str(alert, "fingerprint", where)
        if fingerprint is None:
            # Very old Alertmanagers omit it; the label set is what it hashes.
            fingerprint = "labels:" + digest(sorted(labels.items()))
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
                host=host_or_bad(raw_host, f"{where} host label"),
                name=cut(merged.get("alertname") or "", MAX_NAME),
                summary=cut(summary, MAX_SUMMARY),
                # Alertmanager HA peers each deliver the same notification;
                # these four fields are identical across the copies.
                dedup_key=key(source, group_key or "", fingerprint, status, starts_at or ""),
                starts_at=starts_at,
                labels=merged,
            )
        )
    return out

"""Grafana's unified alerting contact point: Alertmanager's envelope."""
from app.webhooks.sources import alertmanager
from app.webhooks.sources.common import BadPayload


def parse(source, payload, host_labels):
    """Grafana's unified alerting contact point (Alertmanager's envelope); the legacy one is refused."""
    if "alerts" not in payload and ("evalMatches" in payload or "ruleId" in payload):
        # Grafana's legacy (dashboard) alerting, removed in Grafana 11.
        raise BadPayload(
            "legacy Grafana alerting payload (no alerts list); use a unified alerting contact point"
        )
    return alertmanager.parse_alert_group(source, payload, host_labels)

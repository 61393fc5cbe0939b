"""/metrics for Prometheus and /healthz for load balancers and the container runtime.

Both are open (no login), like most exporters: they say how many migrations ran,
never what or where. Put them behind the reverse proxy's rules if that matters.

prometheus_client and the collector (metrics.py) are imported by the two functions that use
them: every page and CLI command loads this package, a scrape is rare.
"""
import logging

from flask import Blueprint, current_app, jsonify, request
from sqlalchemy import text

from app.extensions import db

bp = Blueprint("observability", __name__)
log = logging.getLogger("ferry.observability")
HEALTH_TIMEOUT_S = 2
WEBHOOKS_BLUEPRINT = "hooks"


@bp.after_app_request
def count_refused_webhook_deliveries(response):
    """Count every 4xx answer to a monitoring tool's delivery for /metrics (and the alert rule).

    Watched from here, on the HTTP outcome, so the webhooks code needs no hook of its own.
    """
    if request.blueprint == WEBHOOKS_BLUEPRINT and 400 <= response.status_code < 500:
        from app.observability.metrics import count_refused_delivery
        try:
            count_refused_delivery(response.status_code)
        except Exception as exc:  # noqa: BLE001 - counting must never break the answer
            log.warning("refused webhook delivery not counted: %s", exc)
    return response


@bp.route("/metrics")
def metrics():
    """Prometheus text format, read from the database now; 503 when the database is down."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    from app.observability.metrics import FerryCollector
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FerryCollector())
    try:
        body = generate_latest(registry)
    except Exception as exc:  # noqa: BLE001 - a scrape must say "down", not crash
        db.session.rollback()
        log.warning("metrics scrape failed: %s: %s", type(exc).__name__, exc)
        return "# database unreachable\n", 503, {
            "Content-Type": "text/plain; charset=utf-8"}
    return body, 200, {"Content-Type": CONTENT_TYPE_LATEST}


@bp.route("/healthz")
def healthz():
    """{"status": "ok"} with 200 when the database and Redis answer, else 503 and which failed."""
    checks = {"database": _check("database", _database), "redis": _check("redis", _redis)}
    failing = [name for name, check in checks.items() if not check["ok"]]
    if not failing:
        return jsonify({"status": "ok", **checks}), 200
    return jsonify({"status": "failing", "failing": failing, **checks}), 503


def _check(name, probe):
    try:
        probe()
    except Exception as exc:  # noqa: BLE001 - any failure is "not healthy"
        # The reason goes to the log, not to the open URL: exception text can carry
        # hostnames, database names and driver versions.
        log.warning("health check: %s is failing: %s: %s", name, type(exc).__name__, exc)
        return {"ok": False}
    return {"ok": True}


def _database():
    try:
        db.session.execute(text("SELECT 1"))
    finally:
        db.session.rollback()


def _redis():
    from redis import Redis  # here: only /healthz needs it, every page and CLI command would pay
    conn = Redis.from_url(current_app.config["REDIS_URL"], socket_timeout=HEALTH_TIMEOUT_S,
                          socket_connect_timeout=HEALTH_TIMEOUT_S)
    try:
        conn.ping()
    finally:
        conn.close()

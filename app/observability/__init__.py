"""/metrics for Prometheus and /healthz for load balancers and the container runtime.

Both are open (no login), like most exporters: they say how many migrations ran,
never what or where. Put them behind the reverse proxy's rules if that matters.
"""
import logging

from flask import Blueprint, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis import Redis
from sqlalchemy import text

from app.extensions import db
from app.observability.metrics import FerryCollector

bp = Blueprint("observability", __name__)
log = logging.getLogger("ferry.observability")
HEALTH_TIMEOUT_S = 2


@bp.route("/metrics")
def metrics():
    """Prometheus text format, read from the database now; 503 when the database is down."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FerryCollector())
    try:
        body = generate_latest(registry)
    except Exception as exc:  # noqa: BLE001 - a scrape must say "down", not crash
        db.session.rollback()
        log.warning("metrics scrape failed: %s", exc)
        return f"# database unreachable: {type(exc).__name__}\n", 503, {
            "Content-Type": "text/plain; charset=utf-8"}
    return body, 200, {"Content-Type": CONTENT_TYPE_LATEST}


@bp.route("/healthz")
def healthz():
    """{"status": "ok"} with 200 when the database and Redis answer, else 503 and what failed."""
    checks = {"database": _check(_database), "redis": _check(_redis)}
    healthy = all(c["ok"] for c in checks.values())
    return jsonify({"status": "ok" if healthy else "failing", **checks}), 200 if healthy else 503


def _check(probe):
    try:
        probe()
    except Exception as exc:  # noqa: BLE001 - any failure is "not healthy", with its reason
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True}


def _database():
    try:
        db.session.execute(text("SELECT 1"))
    finally:
        db.session.rollback()


def _redis():
    conn = Redis.from_url(current_app.config["REDIS_URL"], socket_timeout=HEALTH_TIMEOUT_S,
                          socket_connect_timeout=HEALTH_TIMEOUT_S)
    try:
        conn.ping()
    finally:
        conn.close()

"""POST /hooks/<name>: monitoring tools report a bad host; Ferry plans or starts its evacuation.

Answers: 202 when an evacuation was planned or started (its id and URL), 200 when
nothing was (each alert says why), 401 without a bearer token, 403 for a wrong token
(or a name that is no source: the same answer), a wrong signature or a stale signed
timestamp, 400 for a body the source would never send, 413 for a huge one. Bad
input never becomes a 5xx: Alertmanager retries those, and a body that was bad once
is bad every time.
"""
import hashlib
import time

from flask import Blueprint, jsonify, request, url_for

from app import status
from app.extensions import db
from app.json_errors import ApiError, error_response, register
from app.models import WebhookEvent, WebhookSource
from app.webhooks.sources import (MAX_BODY_BYTES, BadPayload, parse_body, stale_timestamp,
                                  verify_bearer, verify_signature)

# services.webhooks is imported where it is used: it loads evacuations, the engine and libvirt, and
# every CLI command and web worker imports this module.

bp = Blueprint("hooks", __name__, url_prefix="/hooks")
register(bp, ("/hooks/",))

# Ferry's own header; Grafana's contact point signs with its own name and, when a
# timestamp header is configured, signs "<timestamp>:<body>".
SIGNATURE_HEADERS = ("X-Ferry-Signature", "X-Grafana-Alerting-Signature")
TIMESTAMP_HEADER = "X-Grafana-Alerting-Signature-Timestamp"
STARTED = (status.WEBHOOK_PLANNED, status.WEBHOOK_EVACUATING)
# Compared against when the name is unknown: the SHA-256 of no token anyone holds.
UNKNOWN_SOURCE_HASH = hashlib.sha256(b"no such webhook source").hexdigest()


@bp.errorhandler(413)
def too_large(error):
    """A body over the cap is refused before it is read."""
    return error_response(413, f"the body is larger than {MAX_BODY_BYTES} bytes")


@bp.route("/<name>", methods=["POST"])
def receive_alerts(name):
    """Authenticate the delivery, parse it as its source's kind, act on every alert."""
    from app.services import webhooks
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("bearer "):
        raise ApiError(401, "send the source's token as Authorization: Bearer <token>")
    # PostgreSQL cannot even compare a string holding NUL: no source has such a name.
    source = None if "\x00" in name else db.session.scalar(
        db.select(WebhookSource).filter_by(name=name))
    # An unknown name answers exactly like a wrong token, after the same work, so that
    # source names cannot be found by trying them.
    token_ok = _bearer_ok(header, UNKNOWN_SOURCE_HASH if source is None else source.token_hash)
    if source is None or not token_ok:
        raise ApiError(403, "the token is not this source's")
    if not source.enabled:
        raise ApiError(403, f"webhook source {name!r} is disabled")
    request.max_content_length = MAX_BODY_BYTES
    raw = request.get_data(cache=True)
    if source.hmac_secret:
        _check_signature(source, raw)
    try:
        alerts = parse_body(source.kind, raw, source.host_labels or ("instance", "host"))
    except BadPayload as exc:
        # Kept, so a person wiring up a tool sees in Ferry why its deliveries bounce.
        db.session.add(WebhookEvent(source_id=source.id, action=status.WEBHOOK_IGNORED,
                                    reason=f"Refused with 400: {exc}"))
        db.session.commit()
        raise ApiError(400, f"not a {source.kind} payload: {exc}") from None
    if not alerts:
        # A tool's test button, or an Uptime Kuma pending/maintenance beat: kept so that
        # whoever wires the tool up can see the delivery arrived.
        db.session.add(WebhookEvent(source_id=source.id, action=status.WEBHOOK_IGNORED,
                                    reason="The delivery carried no alert about a host "
                                           "(a test, or a state that is not down or up)."))
        db.session.commit()
    events = webhooks.handle(source, alerts)
    body = {"source": source.name, "alerts": [_outcome(e) for e in events]}
    started = next((e for e in events if e.action in STARTED), None)
    if started is None:
        return jsonify(body), 200
    body.update(evacuation=started.evacuation_id,
                url=url_for("evacuations.detail", evacuation_id=started.evacuation_id,
                            _external=True),
                api_url=url_for("api.get_evacuation", evacuation_id=started.evacuation_id,
                                _external=True))
    return jsonify(body), 202


def _bearer_ok(header, token_hash):
    """Only the token's SHA-256 is stored: hash what was sent, compare in constant time."""
    scheme, _, token = header.strip().partition(" ")
    digest = hashlib.sha256(token.strip().encode("utf-8", "surrogatepass")).hexdigest()
    return verify_bearer(f"{scheme} {digest}", token_hash)


def _check_signature(source, raw):
    """403 unless the body is signed with the source's secret, and a signed timestamp is fresh."""
    given = next((request.headers[h] for h in SIGNATURE_HEADERS if h in request.headers), None)
    timestamp = request.headers.get(TIMESTAMP_HEADER)
    if not verify_signature(source.hmac_secret, raw, given, timestamp):
        raise ApiError(403, "the signature does not match the body "
                            f"(expected {SIGNATURE_HEADERS[0]}: sha256=<hex HMAC-SHA256>)")
    # Judged only once the signature holds: an unsigned timestamp proves nothing.
    stale = timestamp is not None and stale_timestamp(timestamp, time.time(),
                                                      source.signature_max_age_s)
    if stale:
        raise ApiError(403, f"{stale} (a replayed delivery?); check the sender's clock")


def _outcome(event):
    return {"event": event.id, "host": event.host, "status": event.alert_status,
            "action": event.action, "reason": event.reason,
            "compute_resource": event.compute_resource_id, "evacuation": event.evacuation_id}

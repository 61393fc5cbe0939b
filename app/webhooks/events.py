"""The Webhook events page: every received alert with the action Ferry took (read-only).

A blueprint of its own next to the receiving endpoint (views.py): that one is for machines
(bearer tokens, JSON errors, no sign-in), this page is for people (signed in, HTML).
"""
from flask import Blueprint, render_template, request

from app import status
from app.extensions import db
from app.models import WebhookEvent

bp = Blueprint("webhook_events", __name__, url_prefix="/webhook-events")


@bp.route("/")
def index():
    """The latest received alerts, newest first, optionally only one action (?action=)."""
    action = request.args.get("action", "")
    query = db.select(WebhookEvent).order_by(WebhookEvent.id.desc())
    if action in status.WEBHOOK_ACTIONS:
        query = query.where(WebhookEvent.action == action)
    return render_template("webhooks/events.html", action=action,
                           events=db.session.scalars(query.limit(200)).all())

"""The audit trail: one entry for every action that changes something."""
from flask import has_request_context
from flask_login import current_user

from app.extensions import db
from app.models import AuditEntry


def record(action, target=None, detail=None, user=None):
    """Add an audit entry to the session; the caller's commit makes it part of the change."""
    if user is None and has_request_context() and current_user.is_authenticated:
        user = current_user._get_current_object()
    entry = AuditEntry(action=action, target=target, detail=detail or {}, user=user)
    db.session.add(entry)
    return entry

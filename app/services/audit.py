"""The audit trail: one entry for every action that changes something."""
from app.extensions import db
from app.models import AuditEntry


def record(action, target=None, detail=None, user=None):
    """Add an audit entry by `user` (None: the CLI, a job, an anonymous request) to the session;
    the caller's commit makes it part of the change. The caller says who acted: a service
    never reads the web request's signed-in user."""
    entry = AuditEntry(action=action, target=target, detail=detail or {}, user=user)
    db.session.add(entry)
    return entry

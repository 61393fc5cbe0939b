"""People's credentials: API tokens (issue, list, revoke), disabling users, password changes.

One entry for the CLI and the "Your tokens" page; every change is audited.
"""
from datetime import timedelta

from app.errors import FerryError
from app.extensions import db
from app.models import ApiToken, User, utcnow
from app.services import audit

MAX_TOKEN_DAYS = 3650
MAX_NAME = 100


def get_user(username):
    """The user of that name, or a FerryError."""
    user = db.session.scalar(db.select(User).filter_by(username=username))
    if user is None:
        raise FerryError(f"no user named {username!r}")
    return user


def parse_days(raw):
    """An optional lifetime in whole days ("" or None: no expiry), or a FerryError."""
    if raw is None or str(raw).strip() == "":
        return None
    try:
        days = int(str(raw).strip())
    except ValueError:
        raise FerryError(f"expiry {raw!r} is not a whole number of days") from None
    if not 1 <= days <= MAX_TOKEN_DAYS:
        raise FerryError(f"expiry must be between 1 and {MAX_TOKEN_DAYS} days")
    return days


def issue_token(user, name, days=None, by=None):
    """Issue a token for `user` expiring after `days` (None: never); returns (row, plaintext).
    `by` is who issued it for the audit trail (the user themselves on their account page,
    None from the CLI)."""
    name = (name or "").strip()
    if not name or len(name) > MAX_NAME:
        raise FerryError(f"a token needs a name of 1 to {MAX_NAME} characters")
    expires_at = utcnow() + timedelta(days=days) if days else None
    row, plaintext = ApiToken.issue(user, name, expires_at)
    db.session.add(row)
    audit.record("api_token.issue", f"user:{user.username}",
                 {"name": name, "prefix": row.prefix,
                  "expires_at": expires_at.isoformat() if expires_at else None}, user=by)
    db.session.commit()
    return row, plaintext


def tokens_of(user):
    """A user's tokens, newest first (revoked and expired ones included, for the record)."""
    return db.session.scalars(db.select(ApiToken).filter_by(user_id=user.id)
                              .order_by(ApiToken.created_at.desc(), ApiToken.id.desc())).all()


def revoke_token(token_id, owner=None):
    """Revoke a token at once; with `owner`, only one of theirs (others read as not found), and
    the owner is who revoked it in the audit trail."""
    token = db.session.get(ApiToken, token_id)
    if token is None or (owner is not None and token.user_id != owner.id):
        raise FerryError(f"no API token with id {token_id}")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        audit.record("api_token.revoke", f"user:{token.user.username}",
                     {"token": token.id, "name": token.name, "prefix": token.prefix}, user=owner)
        db.session.commit()
    return token


def set_disabled(user, disabled):
    """Disable a user (sessions and tokens stop at their next request) or enable them again.

    Disabling also ends their sessions for good: enabling later must not bring back a
    session cookie signed in before.
    """
    if disabled and user.disabled_at is None:
        user.disabled_at = utcnow()
        user.end_sessions()
    elif not disabled:
        user.disabled_at = None
    audit.record("user.disable" if disabled else "user.enable", f"user:{user.username}")
    db.session.commit()
    return user


def change_password(user, current, new):
    """Change one's own password; every other session of the user ends."""
    if not user.check_password(current):
        raise FerryError("the current password is wrong")
    if len(new) < 12:
        raise FerryError("the new password needs at least 12 characters")
    user.set_password(new)
    audit.record("user.password", f"user:{user.username}", user=user)
    db.session.commit()

"""Who is asking and what they may do, for every blueprint: the API token loader and the
role check on views. Blueprints import these from here, never from one another.
"""
import functools

from flask import abort
from flask_login import current_user

from app.extensions import db, login_manager
from app.models import ApiToken, utcnow


@login_manager.request_loader
def load_user_from_token(req):
    """Scripts send `Authorization: Bearer <token>`; only the token's hash is looked up."""
    header = req.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return None
    token = db.session.scalar(db.select(ApiToken).filter_by(
        token_hash=ApiToken.hash(header[len("Bearer "):].strip())))
    if token is None or not token.accepts():
        return None
    token.last_used_at = utcnow()
    db.session.commit()
    req.environ["ferry.api_token"] = token.id
    return token.user


def require_role(role):
    """Decorate a view that needs at least `role` (the guard already stops viewers' POSTs)."""
    def decorator(view):
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            if not current_user.is_authenticated or not current_user.has_role(role):
                abort(403)
            return view(*args, **kwargs)
        return wrapped
    return decorator

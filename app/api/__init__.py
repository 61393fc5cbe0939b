"""/api/v1: Ferry for scripts. Bearer API tokens act with their user's role; errors share one shape.

    curl -H "Authorization: Bearer $FERRY_TOKEN" http://ferry:8080/api/v1/servers

Viewers read; operators also sync, preflight, migrate, cancel, evacuate and switch
maintenance; admins also see the webhook sources. The OpenAPI document at
/api/v1/openapi.json describes every route (app/api/openapi.py).
"""
import functools

from flask import Blueprint, g, request

from app import status
from app.access import load_user_from_token
from app.json_errors import ApiError, register

bp = Blueprint("api", __name__, url_prefix="/api/v1")
register(bp, ("/api/",))
PUBLIC = {"api.openapi"}


@bp.before_request
def authenticate():
    """Every route but the OpenAPI document needs a valid API token (cookies are not looked at)."""
    if request.endpoint in PUBLIC:
        return None
    if not request.headers.get("Authorization", "").startswith("Bearer "):
        raise ApiError(401, "send an API token as Authorization: Bearer <token> "
                            "(flask --app wsgi users token USERNAME makes one)")
    user = load_user_from_token(request)
    if user is None:
        raise ApiError(401, "the API token is not valid", code="invalid_token")
    g.api_user = user
    return None


def needs(role):
    """Decorate a route that needs at least `role` (every route needs a viewer's token)."""
    def decorator(view):
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            if not g.api_user.has_role(role):
                raise ApiError(403, f"this needs the {role} role; the token's user "
                                    f"{g.api_user.username} is {g.api_user.role}")
            return view(*args, **kwargs)
        wrapped.required_role = role
        return wrapped
    return decorator


OPERATOR = needs(status.ROLE_OPERATOR)
ADMIN = needs(status.ROLE_ADMIN)

from app.api import views  # noqa: E402,F401 - routes attach themselves to bp

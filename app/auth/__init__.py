"""Signing in and out, roles, API tokens, and the guard in front of every view."""
from app.auth import account  # noqa: F401  (its views join the auth blueprint)
from app.auth.views import bp  # noqa: F401

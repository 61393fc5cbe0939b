"""Compute resources: add, detail, test connection, sync, maintenance."""
from app.resources.views import bp  # noqa: F401

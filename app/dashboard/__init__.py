"""The dashboard: compute resources at a glance and migrations in flight."""
from app.dashboard.views import bp  # noqa: F401

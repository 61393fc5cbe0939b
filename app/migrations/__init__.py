"""The migrate dialog, migration groups and tasks with live progress, history, reports, known issues."""
from app.migrations.views import bp  # noqa: F401

"""Evacuate a compute resource from the browser: plan, approve, follow, return the servers."""
from app.evacuations.views import bp  # noqa: F401

"""The servers list, filterable by state and compute resource."""
from app.servers.views import bp  # noqa: F401

"""The migratability matrix: servers × compute resources, live / offline only / no."""
from app.matrix.views import bp  # noqa: F401

"""Template filters and globals shared by every page."""
from datetime import datetime, timezone

from app import status


def human_bytes(value):
    """1536 -> '1.5 KiB'.

    >>> human_bytes(1536), human_bytes(None)
    ('1.5 KiB', '—')
    """
    if value is None:
        return "—"
    value = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def ago(moment):
    """A short 'how long ago' for a timestamp.

    >>> ago(None)
    'never'
    """
    if moment is None:
        return "never"
    seconds = int((datetime.now(timezone.utc) - moment).total_seconds())
    if seconds < 60:
        return f"{max(seconds, 0)} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def register(app):
    """Install the filters and make the status constants available to templates."""
    app.jinja_env.filters["bytes"] = human_bytes
    app.jinja_env.filters["ago"] = ago
    app.jinja_env.globals["status"] = status

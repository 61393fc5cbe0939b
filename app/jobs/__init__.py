"""Job pages: the row's status, log and traceback; a fragment that polls while it runs."""
from app.jobs.views import bp  # noqa: F401

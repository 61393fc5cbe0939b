"""The list of alerts monitoring tools sent, and what Ferry did about each."""
from app.webhook_events.views import bp  # noqa: F401

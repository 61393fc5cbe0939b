"""WSGI entry point: `gunicorn wsgi:app`, `flask --app wsgi ...`."""
from app import create_app
from app.observability import logs

app = create_app()
logs.configure(app.config["LOG_FORMAT"])  # text, or one JSON object per line

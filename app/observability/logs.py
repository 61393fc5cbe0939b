"""Log lines as plain text or one JSON object per line (FERRY_LOG_FORMAT=json), with context.

Code that works on a task says so once, and every line logged inside carries it:

    with log_context(task=task.id, group=task.group_id, server=server.name, node=source.name):
        log.info("copying disks")   # {"message": "copying disks", "task": 12, "group": 4, ...}

Contexts nest (an inner one adds or overrides keys) and follow threads started
with contextvars.copy_context().run; a plain thread starts with none.
"""
import contextlib
import contextvars
import json
import logging
import sys
import traceback
from datetime import datetime, timezone

from app.errors import ConfigError

FORMATS = ("text", "json")
# Every JSON line has these keys (null when unknown), so a query for task=12 never misses a
# line because the key was absent.
CONTEXT_KEYS = ("task", "group", "server", "node")
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s%(context)s"

_context = contextvars.ContextVar("ferry_log_context", default={})


@contextlib.contextmanager
def log_context(**values):
    """Add `values` (task, group, server, node, or any other key) to every line logged inside."""
    token = _context.set({**_context.get(), **{k: v for k, v in values.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def current_context():
    """The keys the innermost log_context set (a copy)."""
    return dict(_context.get())


class ContextFilter(logging.Filter):
    """Put the current log_context on each record as `record.ferry_context`."""

    def filter(self, record):
        """Never drops a record; only annotates it."""
        record.ferry_context = current_context()
        ctx = record.ferry_context
        record.context = "".join(f" {k}={v}" for k, v in ctx.items()) if ctx else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the context keys, any exception."""

    def format(self, record):
        """Serialise `record`; values JSON cannot hold become their str()."""
        line = {"time": datetime.fromtimestamp(record.created, timezone.utc)
                .isoformat(timespec="milliseconds"),
                "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        context = getattr(record, "ferry_context", None)
        if context is None:
            context = current_context()
        line.update({key: None for key in CONTEXT_KEYS})
        line.update(context)
        if record.exc_info:
            line["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return json.dumps(line, default=str)


def configure(log_format="text", level=logging.INFO, stream=None):
    """Send every logger's lines to `stream` (stderr) in `log_format`, replacing root's handlers.

    Called by the entry points (wsgi.py, `python -m worker`), never by create_app:
    tests and embedding code keep their own logging.
    """
    if log_format not in FORMATS:
        raise ConfigError(f"LOG_FORMAT={log_format!r} must be one of: {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


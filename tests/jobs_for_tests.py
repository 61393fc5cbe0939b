"""RQ entry points used only by tests (importable by the forked work horse)."""
import logging

from app.errors import FerryError
from worker.jobs import entry

log = logging.getLogger("ferry.tests")


@entry
def explode(job, message):
    """A bug: anything but a FerryError."""
    log.info("about to explode")
    raise ZeroDivisionError(message)


@entry
def refuse(job, reason):
    """A known failure."""
    raise FerryError(reason)


@entry
def succeed(job, value):
    """A job that works and says so in its log."""
    log.info("working on %s", value)
    return {"value": value}

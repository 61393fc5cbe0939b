"""The one Flask app of a worker process, created once and inherited by every forked job."""
from rq import Worker

from app.extensions import db

_app = None


def get_app():
    """The worker's app, created on first use from the environment's configuration."""
    global _app
    if _app is None:
        from app import create_app
        _app = create_app()
    return _app


def set_app(app):
    """Use `app` for jobs run in this process (the worker entry point and the tests do this)."""
    global _app
    _app = app


def forget_parent_connections(app):
    """In a forked child, drop the pools inherited from the parent without closing the
    parent's sockets: the child opens connections of its own."""
    with app.app_context():
        for engine in db.engines.values():
            engine.dispose(close=False)


class FerryWorker(Worker):
    """An RQ worker whose forked work horse never reuses the parent's database connections."""

    def main_work_horse(self, job, queue):
        """In the child, drop the inherited pool without closing the parent's sockets."""
        forget_parent_connections(get_app())
        super().main_work_horse(job, queue)

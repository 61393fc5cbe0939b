"""The one Flask app of a worker process, created once and inherited by every forked job."""
import importlib

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


# What a migration job imports on its first run (the engine, Fabric, paramiko, cryptography),
# imported once by the worker so that every work horse forked from it starts with them: the
# commands import them where they are used, so a horse paid for them on every job (bench
# user_paths: about 70 ms more in `connect` and 50 ms in `queued` than the same move run in
# one process). Importing opens nothing: no connection, no libvirt event loop.
JOB_MODULES = ("app.services.migration", "app.services.engine", "app.services.live",
               "app.services.offline", "app.services.preflight", "app.services.inventory",
               "app.services.evacuation", "fabric", "paramiko", "cryptography.x509")


def preload_job_modules() -> tuple:
    """Import JOB_MODULES into this process; returns their names."""
    for name in JOB_MODULES:
        importlib.import_module(name)
    return JOB_MODULES


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

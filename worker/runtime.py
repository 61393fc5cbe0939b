"""The one Flask app of a worker process, created once and inherited by every forked job."""
import gc
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


def freeze_for_horses() -> int:
    """Move every object this process holds now into the collector's permanent generation;
    returns how many. A full collection walks every tracked object, writing to the page each
    sits on: with the app and the job modules loaded that took 140-170 ms on the lab machine
    (in the worker process, once in nine moves of a bench run, every thread of it held for
    that long; in a forked child it would also copy every page it shares with the parent),
    and 0.1 ms with them frozen. Call it last, once the process has loaded what every job
    uses."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


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

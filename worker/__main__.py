"""`python -m worker`: upgrade the schema, settle orphaned tasks, then run an RQ worker (JSON
serializer) and the periodic syncs and recovery passes.

`kill -USR1 <pid>` writes every thread's stack to the worker's log (its work horses inherit
it), to see where a job that seems stuck is waiting, without stopping it.

FERRY_WORKER_NAME names the RQ worker (default: a random one), which also ends its lease
owner id (hostname:pid:name; FERRY_WORKER_HOST overrides the hostname, see services.lease).
"""
import argparse
import faulthandler
import os
import signal

from rq.serializers import JSONSerializer

from app import upgrade_database
from app.infra import host
from app.observability import logs
from app.services import lease, workers
from app.services.jobs import QUEUE_DEFAULT, QUEUE_MIGRATIONS, redis_connection
from worker import schedule
from worker.runtime import FerryWorker, freeze_for_horses, get_app, preload_job_modules


def main(argv=None):
    """Parse the options and work until stopped."""
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--queue", action="append", dest="queues",
                        help=f"queue to serve (repeatable; default {QUEUE_DEFAULT} and {QUEUE_MIGRATIONS})")
    parser.add_argument("--burst", action="store_true", help="quit when the queues are empty")
    parser.add_argument("--no-schedule", action="store_true",
                        help="do not run the periodic syncs and recovery passes")
    args = parser.parse_args(argv)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    app = get_app()
    logs.configure(app.config["LOG_FORMAT"])  # text, or one JSON object per line
    upgrade_database(app)
    worker = FerryWorker(args.queues or [QUEUE_DEFAULT, QUEUE_MIGRATIONS],
                         name=os.environ.get("FERRY_WORKER_NAME") or None,
                         connection=redis_connection(app), serializer=JSONSerializer)
    lease.set_worker_name(worker.name)  # leases it takes read hostname:pid:<worker name>
    # Every job runs in a forked work horse, and a child cannot run libvirt's event loop if
    # its parent ran one: nodes are only ever reached from children (horses, recovery passes).
    host.forbid_libvirt("the worker forks a work horse per job; nodes are reached from children")
    preload_job_modules()  # every horse inherits them instead of importing them per job
    # A worker that starts settles what a dead one left behind, before taking new work.
    schedule.recovery_tick(app)
    if not args.no_schedule and not args.burst:
        schedule.start(app)  # the outbox, inventory syncs and recovery passes
    workers.start_heartbeat(app, worker.name)  # /metrics and the dashboard see this worker
    freeze_for_horses()  # a full collection no longer walks (or copies) what was loaded
    worker.work(burst=args.burst, logging_level="INFO")


if __name__ == "__main__":
    main()

"""`python -m worker`: upgrade the schema, settle orphaned tasks, then run an RQ worker (JSON
serializer) and the periodic syncs and recovery passes."""
import argparse
import logging

from rq.serializers import JSONSerializer

from app import upgrade_database
from app.observability import logs
from app.services import workers
from app.services.jobs import QUEUE_DEFAULT, QUEUE_MIGRATIONS, redis_connection
from worker import schedule
from worker.runtime import FerryWorker, get_app


def main(argv=None):
    """Parse the options and work until stopped."""
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--queue", action="append", dest="queues",
                        help=f"queue to serve (repeatable; default {QUEUE_DEFAULT} and {QUEUE_MIGRATIONS})")
    parser.add_argument("--burst", action="store_true", help="quit when the queues are empty")
    parser.add_argument("--no-schedule", action="store_true",
                        help="do not run the periodic syncs and recovery passes")
    args = parser.parse_args(argv)
    app = get_app()
    logs.configure(app.config["LOG_FORMAT"])  # text, or one JSON object per line
    upgrade_database(app)
    # A worker that starts settles the tasks a dead one left behind, before taking new work.
    from app.services import recovery
    with app.app_context():
        for task_id, outcome in recovery.reconcile():
            logging.getLogger("ferry.recovery").warning("task %s reconciled: %s", task_id, outcome)
    periodic = app.config["SYNC_INTERVAL"] or app.config["ORPHAN_AFTER"]
    if periodic and not args.no_schedule and not args.burst:
        schedule.start(app)  # inventory syncs and recovery passes
    worker = FerryWorker(args.queues or [QUEUE_DEFAULT, QUEUE_MIGRATIONS],
                         connection=redis_connection(app), serializer=JSONSerializer)
    workers.start_heartbeat(app, worker.name)  # /metrics and the dashboard see this worker
    worker.work(burst=args.burst, logging_level="INFO")


if __name__ == "__main__":
    main()

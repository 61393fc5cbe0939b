"""`flask --app wsgi migrate SERVER... --to NODE`: the engine without the web UI."""
import json
import time

import click
from flask.cli import with_appcontext

from app import status
from app.errors import FerryError
from app.extensions import db
from app.models import MigrationGroup, Server
from app.services import jobs, resources


def _server(ref):
    """A server by name or UUID; a name must be unambiguous."""
    rows = db.session.scalars(db.select(Server).where(
        (Server.name == ref) | (Server.uuid == ref))).all()
    if not rows:
        raise FerryError(f"no server named {ref!r}")
    if len(rows) > 1:
        raise FerryError(f"{len(rows)} servers are named {ref!r}: use the UUID")
    return rows[0]


def worker_listening():
    """True when some RQ worker serves the migrations queue."""
    from rq import Worker  # only `migrate` asks; every other command starts without rq
    try:
        conn = jobs.redis_connection()
        return any(jobs.QUEUE_MIGRATIONS in w.queue_names() for w in Worker.all(connection=conn))
    except Exception:  # noqa: BLE001 - no Redis: run here
        return False


def _print_preflight(report):
    """The preflight, one check a line."""
    marks = {"pass": "ok  ", "info": "info", "warn": "WARN", "fail": "FAIL"}
    for result in report["results"]:
        click.echo(f"  [{marks[result['status']]}] {result['name']}: {result['message']}")
    for name, eta in (report.get("eta") or {}).items():
        if not eta:
            continue
        if eta["seconds"] is None:  # infinite: stored as null
            click.echo(f"  ETA {name}: none - will not converge at current settings")
            continue
        click.echo(f"  ETA {name}: {eta['seconds']:.1f} s ({eta['low']:.1f}-{eta['high']:.1f} s)"
                   + ("" if eta["converges"] else " - will not converge at current settings"))


@click.command("migrate")
@with_appcontext
@click.argument("servers", nargs=-1, required=True)
@click.option("--to", "destination", required=True, help="destination compute resource")
@click.option("--offline", is_flag=True, help="offline migration (servers must be stopped)")
@click.option("--no-preserve-ip", is_flag=True, help="give the servers new IPs on the destination")
@click.option("--convert", type=click.Choice(status.STORAGE_TYPES),  # = migration.CONVERSIONS
              help="target storage type")
@click.option("--allow-postcopy", is_flag=True, help="let the ladder switch to post-copy")
@click.option("--acknowledge-warnings", is_flag=True, help="start despite preflight warnings")
@click.option("--wait", is_flag=True, help="follow the group until it ends")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object with the outcome")
def migrate_command(servers, destination, offline, no_preserve_ip, convert, allow_postcopy,
                    acknowledge_warnings, wait, as_json):
    """Migrate servers to a compute resource: preflight, then progress, then the result."""
    from app.services import migration
    try:
        request = migration.Request(
            server_ids=tuple(_server(ref).id for ref in servers),
            destination_id=resources.get(destination).id, live=not offline,
            preserve_ip=not no_preserve_ip, convert_to=convert, allow_postcopy=allow_postcopy,
            acknowledge_warnings=acknowledge_warnings)
        run_here = wait and not worker_listening()
        group = migration.start_group(request, enqueue=not run_here)
    except FerryError as exc:
        raise click.ClickException(str(exc)) from None
    report = group.tasks[0].preflight if group.tasks and group.tasks[0].preflight else None
    if not as_json:
        click.echo(f"Migration group {group.id}: preflight")
        if report:
            _print_preflight(report)
    if group.status == status.MIGRATION_RUNNING and wait:
        if run_here:
            migration.run_group(group.id)
        else:
            follow(group.id, quiet=as_json)
    db.session.expire_all()
    group = db.session.get(MigrationGroup, group.id)
    outcome = migration.group_report(group)
    if as_json:
        click.echo(json.dumps(outcome, default=str))
    else:
        click.echo(f"Group {group.id}: {group.status}")
        for task in outcome["tasks"]:
            line = f"  {task['server']}: {task['status']}"
            if task["downtime_ms"] is not None:
                line += f", downtime {task['downtime_ms']} ms"
            if task["total_ms"] is not None:
                line += f", {task['total_ms'] / 1000:.1f} s"
            if task["error"]:
                line += f" - {task['error']}"
            click.echo(line)
    if group.status not in (status.MIGRATION_FINISHED, status.MIGRATION_RUNNING):
        raise SystemExit(1)


# How often --wait reads the group's status: the command ends on average half of this after
# the move (issue 13: the CLI within 0.5 s of the API; bench user_paths measured 64-210 ms
# between the group's end and the command's exit at 0.2 s). One column of one row each time.
FOLLOW_POLL_S = 0.05
# How often it reads the tasks' progress to print it: a line a second is what a person reads,
# and the rows and their progress documents are the expensive part of a read.
PROGRESS_EVERY_S = 1.0


def follow(group_id, quiet):
    """Wait until the group ends, printing each task's progress line when it changes."""
    shown, progress_at = {}, 0.0
    while True:
        db.session.rollback()  # end the read: the next one sees what the worker committed since
        state = db.session.scalar(db.select(MigrationGroup.status)
                                  .where(MigrationGroup.id == group_id))
        if state in status.MIGRATION_DONE:
            return
        if not quiet and time.monotonic() >= progress_at:
            progress_at = time.monotonic() + PROGRESS_EVERY_S
            for task in db.session.get(MigrationGroup, group_id).tasks:
                progress = task.progress_record.percent
                line = f"  {task.server.name}: {task.status} {task.phase or ''} " \
                       f"{'' if progress is None else f'{progress:.0f}%'}"
                if shown.get(task.id) != line:  # per task: a group's lines alternate
                    click.echo(line)
                    shown[task.id] = line
        time.sleep(FOLLOW_POLL_S)

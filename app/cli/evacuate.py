"""`flask --app wsgi evacuate NODE`: plan emptying a compute resource, approve it, bring servers back."""
import json

import click
from flask.cli import with_appcontext

from app import status
from app.cli.migrate import follow, worker_listening
from app.errors import FerryError
from app.extensions import db
from app.services import resources


def _print_plan(evac):
    """The plan, one server a line."""
    verb = "return to" if evac.kind == status.EVACUATION_RETURN else "evacuate"
    click.echo(f"Evacuation {evac.id} ({verb} {evac.compute_resource.name}): {evac.status}")
    plan = evac.plan_record
    for move in plan.moves:
        click.echo(f"  {move.server} -> {move.destination} ({move.mode})")
    for unplaced in plan.unplaced:
        click.echo(f"  {unplaced.server} stays: {unplaced.reason}")


@click.command("evacuate")
@with_appcontext
@click.argument("node")
@click.option("--approve", is_flag=True, help="run the plan (the node goes into maintenance)")
@click.option("--return", "back", is_flag=True,
              help="plan moving back the servers the last evacuation took off NODE")
@click.option("--wait", is_flag=True, help="with --approve: follow the migration group to its end")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def evacuate_command(node, approve, back, wait, as_json):
    """Plan where every server of NODE goes (or why it cannot), and with --approve, move them."""
    from app.services import evacuation, migration
    try:
        resource = resources.get(node)
        evac = (evacuation.plan_return(resource.id) if back
                else evacuation.make_plan(resource.id))
        if not as_json:
            _print_plan(evac)
        if approve:
            run_here = wait and not worker_listening()
            evac = evacuation.approve(evac.id, enqueue=not run_here)
            if evac.group is not None and evac.group.status == status.MIGRATION_RUNNING and wait:
                if run_here:
                    migration.run_group(evac.group.id)
                else:
                    follow(evac.group.id, quiet=as_json)
    except FerryError as exc:
        raise click.ClickException(str(exc)) from None
    db.session.expire_all()
    evac = evacuation.get(evac.id)
    out = {"evacuation": evac.id, "kind": evac.kind, "status": evac.status,
           "plan": evac.plan_record.to_json(),
           "error": evac.error,
           "group": migration.group_report(evac.group) if evac.group is not None else None}
    if as_json:
        click.echo(json.dumps(out, default=str))
    elif evac.group is not None:
        click.echo(f"Group {evac.group.id}: {evac.group.status}")
        if evac.error:
            click.echo(f"  {evac.error}")
    if evac.status == status.EVACUATION_FAILED:
        raise SystemExit(1)

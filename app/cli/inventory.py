"""`flask --app wsgi resources|ip-blocks|sync`: the compute resources, their IP blocks, and the
inventory sync."""
import json

import click
from flask.cli import AppGroup, with_appcontext

from app.cli import fail
from app.errors import FerryError
from app.extensions import db
from app.models import ComputeResource, IpBlock
from app.services import audit, resources

# services.inventory is imported where it is used: it loads cryptography through the certificates,
# and every CLI command and web worker imports this module.

resources_cli = AppGroup("resources", help="Compute resources (hypervisor hosts).")
ipblocks_cli = AppGroup("ip-blocks", help="IP blocks and the compute resources that have them.")


@resources_cli.command("add")
@click.argument("name")
@click.option("--host", required=True, help="SSH address of the node")
@click.option("--port", default=22, show_default=True, type=int)
@click.option("--user", default="root", show_default=True)
@click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="private key Ferry logs in with")
@click.option("--storage-tag", "storage_tags", multiple=True, help="repeatable")
@click.option("--backup-dir", help="temporary backup directory on the node")
@click.option("--fingerprint", "expect_fingerprint",
              help="expected SHA256 host key fingerprint; refuse to pin any other")
def resources_add(name, host, port, user, key_path, storage_tags, backup_dir, expect_fingerprint):
    """Add a compute resource and pin the SSH host key it presents."""
    try:
        resource = resources.add(name, host, user, key_path, port, backup_dir=backup_dir,
                                 storage_tags=storage_tags, expect_fingerprint=expect_fingerprint)
    except FerryError as exc:
        fail(exc)
    click.echo(f"Added {resource.name} ({user}@{host}:{port}).")
    click.echo(f"Pinned host key {resource.host_key_fingerprint}")


@resources_cli.command("list")
def resources_list():
    """List compute resources with status and host key fingerprint."""
    # Rows of the table, not objects: the ORM would first configure every model's mappers,
    # a tenth of this command's start-up (36 ms of 0.5 s), to print six columns.
    table = ComputeResource.__table__
    for r in db.session.execute(db.select(
            table.c.name, table.c.status, table.c.user, table.c.host, table.c.port,
            table.c.host_key_fingerprint, table.c.status_reason).order_by(table.c.name)):
        click.echo(f"{r.name}\t{r.status}\t{r.user}@{r.host}:{r.port}\t{r.host_key_fingerprint}"
                   + (f"\t{r.status_reason}" if r.status_reason else ""))


@resources_cli.command("test")
@click.argument("name")
def resources_test(name):
    """Test SSH and libvirt to a compute resource with its pinned host key."""
    try:
        result = resources.test_connection(resources.get(name).id)
    except FerryError as exc:
        fail(exc)
    click.echo(json.dumps(result, indent=2))


@resources_cli.command("repin")
@click.argument("name")
@click.confirmation_option(prompt="Trust the key the node presents now?")
def resources_repin(name):
    """Pin the host key the node presents now (after a deliberate reinstall)."""
    try:
        resource = resources.repin(resources.get(name).id)
    except FerryError as exc:
        fail(exc)
    click.echo(f"Pinned host key {resource.host_key_fingerprint}")


@resources_cli.command("maintenance")
@click.argument("name")
@click.option("--on/--off", "on", default=True, help="enter (default) or exit maintenance")
def resources_maintenance(name, on):
    """Put a compute resource in maintenance (it receives no migrations) or take it out."""
    try:
        resource = resources.set_maintenance(resources.get(name).id, on)
    except FerryError as exc:
        fail(exc)
    click.echo(f"{resource.name}: {resource.status}")


@ipblocks_cli.command("add")
@click.argument("name")
@click.option("--cidr", required=True)
@click.option("--gateway")
@click.option("--resource", "resource_names", multiple=True, help="compute resource (repeatable)")
def ipblocks_add(name, cidr, gateway, resource_names):
    """Add an IP block (or update one) and assign it to compute resources."""
    try:
        block = db.session.scalar(db.select(IpBlock).filter_by(name=name)) or IpBlock(name=name)
        block.cidr, block.gateway = cidr, gateway
        for resource_name in resource_names:
            resource = resources.get(resource_name)
            if resource not in block.compute_resources:
                block.compute_resources.append(resource)
    except FerryError as exc:
        fail(exc)
    db.session.add(block)
    audit.record("ip_block.save", f"ip_block:{name}", {"cidr": cidr, "resources": list(resource_names)})
    db.session.commit()
    click.echo(f"IP block {name} {cidr} on {', '.join(r.name for r in block.compute_resources) or '-'}")


@click.command("sync")
@with_appcontext
@click.argument("name", required=False)
@click.option("--enqueue", is_flag=True, help="queue the sync for the worker instead of running it here")
def sync_command(name, enqueue):
    """Sync the inventory of one compute resource, or of all of them."""
    from app.services import inventory
    targets = ([resources.get(name)] if name else
               db.session.scalars(db.select(ComputeResource).order_by(ComputeResource.name)).all())
    failed = False
    for resource in targets:
        if enqueue:
            job = inventory.enqueue_sync(resource)
            click.echo(f"{resource.name}: queued job {job.id}")
            continue
        try:
            summary = inventory.sync(resource.id)
            click.echo(f"{resource.name}: {summary['servers']} servers, {summary['missing']} newly missing")
        except FerryError as exc:
            failed = True
            click.echo(f"{resource.name}: {exc}", err=True)
    if failed:
        raise SystemExit(1)

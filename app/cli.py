"""`flask --app wsgi ...` commands: resources, ip-blocks, sync, users."""
import json
import secrets

import click
from flask.cli import AppGroup, with_appcontext

from app import status
from app.errors import FerryError
from app.extensions import db
from app.models import ComputeResource, IpBlock, User
from app.services import audit, certificates, credentials, inventory, resources

resources_cli = AppGroup("resources", help="Compute resources (hypervisor hosts).")
ipblocks_cli = AppGroup("ip-blocks", help="IP blocks and the compute resources that have them.")
users_cli = AppGroup("users", help="People who sign in.")
pki_cli = AppGroup("pki", help="Ferry's CA and the nodes' transfer TLS certificates.")


def _fail(exc):
    """Turn a FerryError into a clean CLI error (exit code 1, no traceback)."""
    raise click.ClickException(str(exc))


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
        _fail(exc)
    click.echo(f"Added {resource.name} ({user}@{host}:{port}).")
    click.echo(f"Pinned host key {resource.host_key_fingerprint}")


@resources_cli.command("list")
def resources_list():
    """List compute resources with status and host key fingerprint."""
    for r in db.session.scalars(db.select(ComputeResource).order_by(ComputeResource.name)):
        click.echo(f"{r.name}\t{r.status}\t{r.user}@{r.host}:{r.port}\t{r.host_key_fingerprint}"
                   + (f"\t{r.status_reason}" if r.status_reason else ""))


@resources_cli.command("test")
@click.argument("name")
def resources_test(name):
    """Test SSH and libvirt to a compute resource with its pinned host key."""
    try:
        result = resources.test_connection(resources.get(name).id)
    except FerryError as exc:
        _fail(exc)
    click.echo(json.dumps(result, indent=2))


@resources_cli.command("repin")
@click.argument("name")
@click.confirmation_option(prompt="Trust the key the node presents now?")
def resources_repin(name):
    """Pin the host key the node presents now (after a deliberate reinstall)."""
    try:
        resource = resources.repin(resources.get(name).id)
    except FerryError as exc:
        _fail(exc)
    click.echo(f"Pinned host key {resource.host_key_fingerprint}")


@resources_cli.command("maintenance")
@click.argument("name")
@click.option("--on/--off", "on", default=True, help="enter (default) or exit maintenance")
def resources_maintenance(name, on):
    """Put a compute resource in maintenance (it receives no migrations) or take it out."""
    try:
        resource = resources.set_maintenance(resources.get(name).id, on)
    except FerryError as exc:
        _fail(exc)
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
        _fail(exc)
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


@users_cli.command("create-admin")
@click.option("--username", default="admin", show_default=True)
@click.option("--password", help="default: a random one, printed once")
def users_create_admin(username, password):
    """Create an admin (or reset an existing user's password and make them admin)."""
    _save_user(username, password, status.ROLE_ADMIN)


@users_cli.command("create")
@click.argument("username")
@click.option("--role", type=click.Choice(status.ROLES), default=status.ROLE_VIEWER, show_default=True)
@click.option("--password", help="default: a random one, printed once")
def users_create(username, role, password):
    """Create a user with a role."""
    _save_user(username, password, role)


def _save_user(username, password, role):
    """Create or update a user and print the password when it was generated."""
    generated = password is None
    password = password or secrets.token_urlsafe(12)
    user = db.session.scalar(db.select(User).filter_by(username=username)) or User(username=username)
    user.role = role
    user.set_password(password)
    db.session.add(user)
    audit.record("user.save", f"user:{username}", {"role": role})
    db.session.commit()
    click.echo(f"User {username} ({role})" + (f" password: {password}" if generated else ""))


@users_cli.command("disable")
@click.argument("username")
def users_disable(username):
    """Disable a user: no sign-in, and their sessions and API tokens stop working at once."""
    _set_disabled(username, True)


@users_cli.command("enable")
@click.argument("username")
def users_enable(username):
    """Let a disabled user sign in again (old sessions stay ended; tokens work again)."""
    _set_disabled(username, False)


def _set_disabled(username, disabled):
    """Disable or enable a user by name and say what happened."""
    try:
        user = credentials.set_disabled(credentials.get_user(username), disabled)
    except FerryError as exc:
        _fail(exc)
    click.echo(f"User {user.username} {'disabled' if disabled else 'enabled'}.")


@pki_cli.command("init")
def pki_init():
    """Create Ferry's CA (key and certificate, 0600) in the instance folder."""
    try:
        path = certificates.init_ca()
    except FerryError as exc:
        _fail(exc)
    click.echo(f"Created Ferry's CA: {path}")


@pki_cli.command("issue")
@click.argument("name")
def pki_issue(name):
    """Issue (or rotate) a compute resource's certificate and install it over SSH."""
    try:
        verdict = certificates.issue(name)
    except FerryError as exc:
        _fail(exc)
    if not verdict["valid"]:
        _fail(FerryError(f"{name}: installed, but the node's certificate is not valid: "
                         f"{verdict['reason']}"))
    click.echo(f"{name}: certificate installed, {verdict['reason']}.")


def register(app):
    """Attach the command groups to the app's CLI."""
    app.cli.add_command(resources_cli)
    app.cli.add_command(ipblocks_cli)
    app.cli.add_command(users_cli)
    app.cli.add_command(pki_cli)
    from app.api.cli import revoke_token_command, token_command, tokens_command
    from app.webhooks.cli import hooks_cli
    users_cli.add_command(token_command)
    users_cli.add_command(tokens_command)
    users_cli.add_command(revoke_token_command)
    app.cli.add_command(hooks_cli)
    app.cli.add_command(sync_command)
    from app.cli_migrate import migrate_command
    app.cli.add_command(migrate_command)
    from app.cli_evacuate import evacuate_command
    app.cli.add_command(evacuate_command)

"""`flask --app wsgi users ...`: people who sign in (their API tokens: app/cli/tokens.py)."""
import secrets

import click
from flask.cli import AppGroup

from app import status
from app.cli import fail
from app.errors import FerryError
from app.extensions import db
from app.models import User
from app.services import audit, credentials

users_cli = AppGroup("users", help="People who sign in.")


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
        fail(exc)
    click.echo(f"User {user.username} {'disabled' if disabled else 'enabled'}.")

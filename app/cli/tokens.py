"""`flask --app wsgi users token|tokens|revoke-token`: API tokens for scripts.

A token's plaintext is printed once at issue; only its hash is stored.
"""
import click
from flask.cli import with_appcontext

from app.errors import FerryError
from app.services import credentials


@click.command("token")
@with_appcontext
@click.argument("username")
@click.option("--name", default="script", show_default=True, help="what the token is for")
@click.option("--expires-in-days", "days", type=int, help="lifetime in days (default: until revoked)")
def token_command(username, name, days):
    """Issue an API token acting with USERNAME's role; only its hash is stored."""
    try:
        user = credentials.get_user(username)
        row, plaintext = credentials.issue_token(user, name, credentials.parse_days(days))
    except FerryError as exc:
        raise click.ClickException(str(exc)) from None
    until = f"expires {row.expires_at:%Y-%m-%d %H:%M} UTC" if row.expires_at else "never expires"
    click.echo(f"API token {row.prefix}… for {username} ({user.role}), {until}, shown once:")
    click.echo(plaintext)


@click.command("tokens")
@with_appcontext
@click.argument("username")
def tokens_command(username):
    """List USERNAME's API tokens: id, name, prefix, state, created, last used, expiry."""
    try:
        tokens = credentials.tokens_of(credentials.get_user(username))
    except FerryError as exc:
        raise click.ClickException(str(exc)) from None
    for t in tokens:
        click.echo("\t".join([
            str(t.id), t.name, t.prefix + "…", t.state(), f"created {t.created_at:%Y-%m-%d %H:%M}",
            f"used {t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never used",
            f"expires {t.expires_at:%Y-%m-%d %H:%M}" if t.expires_at else "no expiry"]))
    if not tokens:
        click.echo(f"{username} has no API tokens.")


@click.command("revoke-token")
@with_appcontext
@click.argument("token_id", type=int)
def revoke_token_command(token_id):
    """Revoke the API token with that id (see `users tokens NAME`); it stops working at once."""
    try:
        token = credentials.revoke_token(token_id)
    except FerryError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Revoked token {token.id} {token.name} ({token.prefix}…) of {token.user.username}.")

"""`flask --app wsgi users token USERNAME`: an API token for scripts, printed once."""
import click
from flask.cli import with_appcontext

from app.extensions import db
from app.models import ApiToken, User
from app.services import audit


@click.command("token")
@with_appcontext
@click.argument("username")
@click.option("--name", default="script", show_default=True, help="what the token is for")
def token_command(username, name):
    """Issue an API token acting with USERNAME's role; only its hash is stored."""
    user = db.session.scalar(db.select(User).filter_by(username=username))
    if user is None:
        raise click.ClickException(f"no user named {username!r}")
    row, plaintext = ApiToken.issue(user, name)
    db.session.add(row)
    audit.record("api_token.issue", f"user:{username}", {"name": name, "prefix": row.prefix})
    db.session.commit()
    click.echo(f"API token {row.prefix}… for {username} ({user.role}), shown once:")
    click.echo(plaintext)

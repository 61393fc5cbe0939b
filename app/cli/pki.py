"""`flask --app wsgi pki init|issue`: Ferry's CA and the nodes' transfer TLS certificates."""
import click
from flask.cli import AppGroup

from app.cli import fail
from app.errors import FerryError

# services.certificates is imported where it is used: it loads cryptography, and every CLI command
# and web worker imports this module.

pki_cli = AppGroup("pki", help="Ferry's CA and the nodes' transfer TLS certificates.")


@pki_cli.command("init")
def pki_init():
    """Create Ferry's CA (key and certificate, 0600) in the instance folder."""
    from app.services import certificates
    try:
        path = certificates.init_ca()
    except FerryError as exc:
        fail(exc)
    click.echo(f"Created Ferry's CA: {path}")


@pki_cli.command("issue")
@click.argument("name")
def pki_issue(name):
    """Issue (or rotate) a compute resource's certificate and install it over SSH."""
    from app.services import certificates
    try:
        verdict = certificates.issue(name)
    except FerryError as exc:
        fail(exc)
    if not verdict["valid"]:
        fail(FerryError(f"{name}: installed, but the node's certificate is not valid: "
                         f"{verdict['reason']}"))
    click.echo(f"{name}: certificate installed, {verdict['reason']}.")

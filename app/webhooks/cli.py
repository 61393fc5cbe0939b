"""`flask --app wsgi hooks add|list|remove`: the monitoring tools allowed to call /hooks/<name>."""
import hashlib
import re
import secrets

import click
from flask.cli import AppGroup

from app import status
from app.extensions import db
from app.models import WebhookEvent, WebhookSource
from app.services import audit

hooks_cli = AppGroup("hooks", help="Monitoring webhook sources (POST /hooks/<name>).")

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def issue_source(name, kind, policy, labels=(), with_hmac=False):
    """Create a source; returns (row, token, hmac secret or None). Only the token's hash is kept."""
    if not NAME.match(name or ""):
        raise click.ClickException("a source name is letters, digits, '.', '_' or '-' (it is a URL "
                                   "segment)")
    if db.session.scalar(db.select(WebhookSource).filter_by(name=name)):
        raise click.ClickException(f"a webhook source named {name!r} already exists")
    token = "fwh_" + secrets.token_urlsafe(32)
    secret = secrets.token_hex(32) if with_hmac else None
    source = WebhookSource(name=name, kind=kind, policy=policy,
                           token_hash=hashlib.sha256(token.encode()).hexdigest(),
                           hmac_secret=secret, host_labels=list(labels) or ["instance", "host"])
    db.session.add(source)
    audit.record("webhook_source.add", f"webhook_source:{name}",
                 {"kind": kind, "policy": policy, "hmac": bool(secret)})
    db.session.commit()
    return source, token, secret


@hooks_cli.command("add")
@click.argument("name")
@click.option("--kind", required=True, type=click.Choice(status.WEBHOOK_KINDS))
@click.option("--policy", default=status.WEBHOOK_POLICY_PLAN, show_default=True,
              type=click.Choice(status.WEBHOOK_POLICIES),
              help="plan: make a plan to approve; evacuate: plan and start it")
@click.option("--hmac", "with_hmac", is_flag=True, help="also require an HMAC-SHA256 signature")
@click.option("--label", "labels", multiple=True,
              help="label naming the host, in order (repeatable; default instance, then host)")
def hooks_add(name, kind, policy, with_hmac, labels):
    """Allow a monitoring tool to call /hooks/NAME; prints its token (and secret) once."""
    source, token, secret = issue_source(name, kind, policy, labels, with_hmac)
    click.echo(f"Webhook source {source.name} ({kind}, policy {policy}): POST /hooks/{source.name}")
    click.echo(f"Token (shown once): {token}")
    if secret:
        click.echo(f"HMAC secret (shown once): {secret}")


@hooks_cli.command("list")
def hooks_list():
    """List webhook sources: name, kind, policy, host labels, HMAC, enabled."""
    for s in db.session.scalars(db.select(WebhookSource).order_by(WebhookSource.name)):
        click.echo(f"{s.name}\t{s.kind}\t{s.policy}\tlabels={','.join(s.host_labels or [])}\t"
                   f"hmac={'yes' if s.hmac_secret else 'no'}\t"
                   f"{'enabled' if s.enabled else 'disabled'}")


@hooks_cli.command("disable")
@click.argument("name")
def hooks_disable(name):
    """Refuse a source's deliveries (403) without forgetting its token."""
    _set_enabled(name, False)


@hooks_cli.command("enable")
@click.argument("name")
def hooks_enable(name):
    """Accept a disabled source's deliveries again."""
    _set_enabled(name, True)


def _set_enabled(name, enabled):
    source = _source(name)
    source.enabled = enabled
    audit.record("webhook_source.enable" if enabled else "webhook_source.disable",
                 f"webhook_source:{name}")
    db.session.commit()
    click.echo(f"Webhook source {name} {'enabled' if enabled else 'disabled'}.")


def _source(name):
    source = db.session.scalar(db.select(WebhookSource).filter_by(name=name))
    if source is None:
        raise click.ClickException(f"no webhook source named {name!r}")
    return source


@hooks_cli.command("remove")
@click.argument("name")
def hooks_remove(name):
    """Remove a webhook source; its received events stay, without a source."""
    source = _source(name)
    # Said outright: SQLite enforces the foreign key's SET NULL only with a pragma.
    db.session.execute(db.update(WebhookEvent).filter_by(source_id=source.id).values(source_id=None))
    db.session.delete(source)
    audit.record("webhook_source.remove", f"webhook_source:{name}")
    db.session.commit()
    click.echo(f"Removed webhook source {name}.")

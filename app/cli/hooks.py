"""`flask --app wsgi hooks add|set|list|remove`: the monitoring tools allowed to call /hooks/<name>."""
import hashlib
import re
import secrets

import click
from flask.cli import AppGroup

from app import status
from app.extensions import db
from app.models import ComputeResource, WebhookEvent, WebhookSource
from app.services import audit

hooks_cli = AppGroup("hooks", help="Monitoring webhook sources (POST /hooks/<name>).")

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def issue_source(name, kind, policy, labels=(), with_hmac=False, guardrails=None):
    """Create a source; returns (row, token, hmac secret or None). Only the token's hash is kept.

    `guardrails` is {column: value} for the allowlist, start cap and timestamp age.
    """
    if not NAME.match(name or ""):
        raise click.ClickException("a source name is letters, digits, '.', '_' or '-' (it is a URL "
                                   "segment)")
    if db.session.scalar(db.select(WebhookSource).filter_by(name=name)):
        raise click.ClickException(f"a webhook source named {name!r} already exists")
    token = "fwh_" + secrets.token_urlsafe(32)
    secret = secrets.token_hex(32) if with_hmac else None
    source = WebhookSource(name=name, kind=kind, policy=policy,
                           token_hash=hashlib.sha256(token.encode()).hexdigest(),
                           hmac_secret=secret, host_labels=list(labels) or ["instance", "host"],
                           **(guardrails or {}))
    db.session.add(source)
    audit.record("webhook_source.add", f"webhook_source:{name}",
                 {"kind": kind, "policy": policy, "hmac": bool(secret), **(guardrails or {})})
    db.session.commit()
    return source, token, secret


def guardrail_options(command):
    """The allowlist, start cap and timestamp age options `hooks add` and `hooks set` share."""
    for option in reversed([
        click.option("--allow", "allow", multiple=True, metavar="RESOURCE",
                     help="act only on this compute resource (repeatable; with --allow-tag, "
                          "either one lets an alert through)"),
        click.option("--allow-tag", "allow_tags", multiple=True, metavar="TAG",
                     help="act only on compute resources with this storage tag (repeatable)"),
        click.option("--max-starts-per-hour", type=click.IntRange(min=0), metavar="N",
                     help="start at most N evacuations per hour; beyond, only plan them"),
        click.option("--max-signature-age", type=click.IntRange(min=0), metavar="SECONDS",
                     help="refuse a signed timestamp older (or newer) than this; 0: no check "
                          "[default for a new source: 300]"),
    ]):
        command = option(command)
    return command


def guardrails_from(allow, allow_tags, max_starts_per_hour, max_signature_age):
    """The columns the given options set; a named compute resource must exist."""
    values = {}
    if allow:
        known = set(db.session.scalars(db.select(ComputeResource.name)
                                       .where(ComputeResource.name.in_(allow))))
        missing = [name for name in allow if name not in known]
        if missing:
            raise click.ClickException(f"no compute resource named {', '.join(missing)}")
        values["allowed_resources"] = sorted(set(allow))
    if allow_tags:
        values["allowed_tags"] = sorted(set(allow_tags))
    if max_starts_per_hour is not None:
        values["max_starts_per_hour"] = max_starts_per_hour
    if max_signature_age is not None:
        values["signature_max_age_s"] = max_signature_age
    return values


def describe_guardrails(source):
    """A source's allowlist, start cap and timestamp age, as `hooks list` shows them."""
    cap, age = source.max_starts_per_hour, source.signature_max_age_s
    return (f"allow={','.join(source.allowlist) or 'any'}\t"
            f"starts/h={'any' if cap is None else cap}\t"
            f"max-age={f'{age}s' if age else 'off'}")


@hooks_cli.command("add")
@click.argument("name")
@click.option("--kind", required=True, type=click.Choice(status.WEBHOOK_KINDS))
@click.option("--policy", default=status.WEBHOOK_POLICY_PLAN, show_default=True,
              type=click.Choice(status.WEBHOOK_POLICIES),
              help="plan: make a plan to approve; evacuate: plan and start it")
@click.option("--hmac", "with_hmac", is_flag=True, help="also require an HMAC-SHA256 signature")
@click.option("--label", "labels", multiple=True,
              help="label naming the host, in order (repeatable; default instance, then host)")
@guardrail_options
def hooks_add(name, kind, policy, with_hmac, labels, **guardrails):
    """Allow a monitoring tool to call /hooks/NAME; prints its token (and secret) once."""
    source, token, secret = issue_source(name, kind, policy, labels, with_hmac,
                                         guardrails_from(**guardrails))
    click.echo(f"Webhook source {source.name} ({kind}, policy {policy}): POST /hooks/{source.name}")
    click.echo(f"Guardrails: {describe_guardrails(source)}")
    click.echo(f"Token (shown once): {token}")
    if secret:
        click.echo(f"HMAC secret (shown once): {secret}")


@hooks_cli.command("set")
@click.argument("name")
@guardrail_options
@click.option("--allow-any", is_flag=True, help="drop the allowlist: act on any compute resource")
@click.option("--no-cap", is_flag=True, help="drop the cap on evacuations started per hour")
def hooks_set(name, allow_any, no_cap, **guardrails):
    """Change a source's allowlist, start cap or signed-timestamp age."""
    source = _source(name)
    values = guardrails_from(**guardrails)
    if allow_any and ({"allowed_resources", "allowed_tags"} & values.keys()):
        raise click.ClickException("--allow-any drops the allowlist; give it without --allow "
                                   "or --allow-tag")
    if no_cap and "max_starts_per_hour" in values:
        raise click.ClickException("--no-cap drops the cap; give it without --max-starts-per-hour")
    if allow_any:
        values.update(allowed_resources=None, allowed_tags=None)
    if no_cap:
        values["max_starts_per_hour"] = None
    if not values:
        raise click.ClickException("nothing to change: give --allow, --allow-tag, --allow-any, "
                                   "--max-starts-per-hour, --no-cap or --max-signature-age")
    for column, value in values.items():
        setattr(source, column, value)
    audit.record("webhook_source.set", f"webhook_source:{name}", values)
    db.session.commit()
    click.echo(f"Webhook source {name}: {describe_guardrails(source)}")


@hooks_cli.command("list")
def hooks_list():
    """List webhook sources: name, kind, policy, host labels, HMAC, enabled, guardrails."""
    for s in db.session.scalars(db.select(WebhookSource).order_by(WebhookSource.name)):
        click.echo(f"{s.name}\t{s.kind}\t{s.policy}\tlabels={','.join(s.host_labels or [])}\t"
                   f"hmac={'yes' if s.hmac_secret else 'no'}\t"
                   f"{'enabled' if s.enabled else 'disabled'}\t{describe_guardrails(s)}")


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

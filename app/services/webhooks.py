"""What Ferry does with the alerts of an authenticated delivery: one WebhookEvent each.

Rules, in order, for every alert:

- resolved: recorded, nothing started (Ferry never moves servers back by itself);
- no compute resource matches its host: recorded as unknown-host, with why;
- the host is outside the source's allowlist: recorded as refused, with why;
- the same alert again (same dedup key, as Alertmanager HA peers and repeat
  notifications send it): recorded as duplicate, nothing started;
- the host is already being evacuated (or another alert about it is being
  handled this very moment): recorded as ignored;
- otherwise a plan is made; with the source's "evacuate" policy its approval is
  queued as a job, so the monitoring tool gets its answer at once while the
  preflight runs in the worker, unless the source has started as many evacuations
  in the last hour as its cap allows: then the plan waits for a person.

Both "only once" rules hold across processes because they are rows, not memory:
a claim (see services.limits) per dedup key, kept, and a claim per compute
resource held while one delivery decides about it. Two Alertmanagers posting the
same group at the same instant race for one INSERT; exactly one wins. The hourly
cap is numbered claims too, one per start, dropped when an hour old.
"""
import logging
from dataclasses import asdict
from datetime import timedelta

from app import status
from app.errors import FerryError
from app.extensions import db
from app.models import Claim, ComputeResource, WebhookEvent, utcnow
from app.services import evacuation, jobs, limits
from app.webhooks.sources import RESOLVED, match_host

log = logging.getLogger("ferry.webhooks")

DEDUP = "webhook"  # claim kind: one row per dedup key Ferry acted on, never released
HOST_LOCK = "webhook-host"  # claim kind: held while a delivery decides about one resource
# A host lock older than this was left by a process that died mid-request.
HOST_LOCK_STALE = timedelta(minutes=5)
START = "webhook-start"  # claim kind: one numbered slot per evacuation a source started
START_WINDOW = timedelta(hours=1)
ACTED = (status.WEBHOOK_PLANNED, status.WEBHOOK_EVACUATING, status.WEBHOOK_IGNORED)


def handle(source, alerts):
    """Decide and record what to do about each alert; returns the stored WebhookEvents."""
    resources = db.session.execute(db.select(ComputeResource.id, ComputeResource.name,
                                             ComputeResource.host,
                                             ComputeResource.storage_tags)).all()
    return [_handle_one(source, alert, resources) for alert in alerts]


def _handle_one(source, alert, resources):
    """One alert → one committed WebhookEvent."""
    event = WebhookEvent(source_id=source.id, alert_status=alert.status,
                         dedup_key=alert.dedup_key, host=alert.host, alert=asdict(alert))
    match = match_host(alert.host, resources)
    if match is not None:
        event.compute_resource_id = match[0]
    if alert.status == RESOLVED:
        return _record(event, status.WEBHOOK_RESOLVED,
                       "A resolved alert starts nothing; servers are moved back only on request.")
    if match is None:
        return _record(event, status.WEBHOOK_UNKNOWN_HOST, _unknown_reason(source, alert))
    if not source.may_act_on(match[1], match[3]):
        return _record(event, status.WEBHOOK_REFUSED, _refused_reason(source, match[1]))
    if not _claim(DEDUP, alert.dedup_key, f"source:{source.id}"):
        return _record(event, status.WEBHOOK_DUPLICATE, _duplicate_reason(alert))
    resource_id, name = match[0], match[1]
    _drop_stale_host_lock(resource_id)
    if not _claim(HOST_LOCK, str(resource_id), f"source:{source.id}"):
        return _record(event, status.WEBHOOK_IGNORED,
                       f"Another alert about {name} is being handled right now.")
    try:
        return _act(source, event, db.session.get(ComputeResource, resource_id))
    except Exception:
        # A transient fault (database, Redis): the tool retries on 5xx, and the retry must
        # not be taken for a duplicate of a delivery that did nothing.
        db.session.rollback()
        _release(DEDUP, alert.dedup_key)
        raise
    finally:
        _release(HOST_LOCK, str(resource_id))


def _act(source, event, resource):
    """Plan (and, by policy, queue the approval of) the evacuation of a resource with an alert."""
    active = evacuation.active_for(resource.id)
    if active is not None and active.status == status.EVACUATION_RUNNING:
        event.evacuation_id = active.id
        return _record(event, status.WEBHOOK_IGNORED,
                       f"{resource.name} is already being evacuated (evacuation {active.id}).")
    if active is not None and (source.policy == status.WEBHOOK_POLICY_PLAN
                               or _queued_for_approval(active)):
        event.evacuation_id = active.id
        return _record(event, status.WEBHOOK_IGNORED,
                       f"Evacuation {active.id} of {resource.name} is already planned"
                       + (" and its approval is queued." if _queued_for_approval(active)
                          else ", waiting for approval."))
    try:
        evac = evacuation.make_plan(resource.id, origin=f"webhook:{source.name}")
    except FerryError as exc:
        return _record(event, status.WEBHOOK_IGNORED, f"No plan could be made: {exc}")
    event.evacuation_id = evac.id
    plan = evac.plan_record
    summary = f"{len(plan.moves)} server(s) to move, {len(plan.unplaced)} that cannot"
    if source.policy == status.WEBHOOK_POLICY_PLAN:
        return _record(event, status.WEBHOOK_PLANNED,
                       f"Planned evacuation {evac.id} of {resource.name} ({summary}); "
                       "waiting for approval.")
    if not plan.moves:
        return _record(event, status.WEBHOOK_PLANNED,
                       f"Planned evacuation {evac.id} of {resource.name}, but it moves no server "
                       f"({summary}), so nothing was started.")
    over_cap = _take_start_slot(source, evac)
    if over_cap:
        return _record(event, status.WEBHOOK_PLANNED,
                       f"Planned evacuation {evac.id} of {resource.name} ({summary}) but did not "
                       f"start it: {over_cap}. Waiting for approval.")
    try:
        job = jobs.enqueue("approve_evacuation", {"evacuation_id": evac.id})
    except Exception:
        # Nothing started: the slot is given back so the cap counts only real starts.
        db.session.rollback()
        db.session.execute(db.delete(Claim).filter_by(kind=START, holder=f"evacuation:{evac.id}"))
        db.session.commit()
        raise
    return _record(event, status.WEBHOOK_EVACUATING,
                   f"Evacuating {resource.name}: evacuation {evac.id} ({summary}) approved by the "
                   f"{source.name} policy; job {job.id} runs its preflight and starts it.")


def _queued_for_approval(evac):
    """True when a webhook already queued this planned evacuation's approval."""
    return db.session.scalar(db.select(WebhookEvent.id).filter_by(
        evacuation_id=evac.id, action=status.WEBHOOK_EVACUATING).limit(1)) is not None


def _record(event, action, reason):
    """Store the event with what Ferry did and why."""
    event.action, event.reason = action, reason
    db.session.add(event)
    db.session.commit()
    log.info("webhook event %s: %s %s: %s", event.id, event.host, action, reason)
    return event


def _unknown_reason(source, alert):
    if alert.host is None:
        return ("The alert names no host (looked at the labels "
                + ", ".join(source.host_labels or ()) + ").")
    return f"No compute resource is named {alert.host!r} or has that address."


def _refused_reason(source, name):
    return (f"{name} is outside what source {source.name} may act on "
            f"({', '.join(source.allowlist)}): nothing planned.")


def _take_start_slot(source, evac):
    """Take one of the source's start slots for this hour; None when taken, else why not."""
    cap = source.max_starts_per_hour
    if cap is None:
        return None
    key = str(source.id)
    db.session.execute(db.delete(Claim).filter_by(kind=START, key=key)
                       .where(Claim.at < utcnow() - START_WINDOW))
    db.session.commit()
    # Counted first: slots above a cap that was lowered since are still starts.
    if _starts(key) < cap and limits.claim_slot(START, key, range(cap),
                                                f"evacuation:{evac.id}") is not None:
        return None
    return (f"source {source.name} may start {cap} evacuation(s) per hour and has started "
            f"{_starts(key)} in the last hour")


def _starts(key):
    return db.session.scalar(db.select(db.func.count()).select_from(Claim)
                             .filter_by(kind=START, key=key))


def _duplicate_reason(alert):
    first = db.session.scalar(db.select(WebhookEvent).filter_by(dedup_key=alert.dedup_key)
                              .where(WebhookEvent.action.in_(ACTED)).order_by(WebhookEvent.id))
    where = f" (event {first.id})" if first is not None else ""
    return f"The same alert was already received{where}: nothing started."


def _claim(kind, key, holder):
    """INSERT the one row of (kind, key); False when another delivery holds it already."""
    return limits.claim_slot(kind, key, range(1), holder) is not None


def _release(kind, key):
    db.session.execute(db.delete(Claim).filter_by(kind=kind, key=key))
    db.session.commit()


def _drop_stale_host_lock(resource_id):
    db.session.execute(db.delete(Claim).filter_by(kind=HOST_LOCK, key=str(resource_id))
                       .where(Claim.at < utcnow() - HOST_LOCK_STALE))
    db.session.commit()

"""The routes of /api/v1: thin wrappers over the same services the pages and the CLI call."""
from flask import g, jsonify, request
from sqlalchemy import false

from app import status
from app.api import ADMIN, OPERATOR, bp
from app.api import serialize as out
from app.json_errors import ApiError
from app.errors import FerryError, NotFound
from app.extensions import db
from app.models import (ComputeResource, Evacuation, Job, MigrationGroup, MigrationTask, Server,
                        WebhookEvent, WebhookSource)
from app.services import resources

# evacuation, inventory and migration are imported by the routes that use them: they load
# libvirt and cryptography, and every CLI command and web worker imports this module.

MAX_LIMIT = 500
ID_MAX = 2**31 - 1  # the databases' integer ids; a larger number names nothing


# --- helpers -------------------------------------------------------------------------


def _get(model, row_id, what):
    row = db.session.get(model, row_id) if 0 < row_id <= ID_MAX else None
    if row is None:
        raise ApiError(404, f"no {what} {row_id}")
    return row


def _body():
    """The request's JSON object ({} when there is no body); 400 for anything else."""
    if not request.get_data(cache=True).strip():
        return {}
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        raise ApiError(400, "the body must be a JSON object")
    return payload


def _field(body, name, kind, default=None, required=False, nullable=False):
    """One typed field of a JSON body; 400 with the field's name when it has the wrong type."""
    if name not in body or (body[name] is None and nullable):
        if required:
            raise ApiError(400, f"{name!r} is required")
        return default
    value = body[name]
    # JSON true is a Python int too: an id or a count must not accept it.
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        raise ApiError(400, f"{name!r} must be {_KIND_NAMES[kind]}")
    return value


_KIND_NAMES = {bool: "true or false", int: "an integer", str: "a string", list: "a list"}


def _str_arg(name, choices=None):
    """A text query parameter, or None."""
    value = request.args.get(name)
    if value is not None and choices and value not in choices:
        raise ApiError(400, f"query parameter {name!r} must be one of {', '.join(choices)}")
    return value or None


def _filtered(query, text=None, ids=None, choices=None):
    """`query` narrowed by the text and id query parameters that were given ({name: column})."""
    for name, column in (text or {}).items():
        value = _str_arg(name, (choices or {}).get(name))
        if value:
            query = query.where(_matches(column, value))
    for name, column in (ids or {}).items():
        value = _int_arg(name, low=1)
        if value is not None:
            query = query.where(column == value)
    return query


def _matches(column, value, contains=False):
    """column == value (or contains it); no stored text holds a NUL and PostgreSQL refuses one."""
    if "\x00" in value:
        return false()
    return column.contains(value, autoescape=True) if contains else column == value


def _int_arg(name, default=None, low=0, high=ID_MAX):
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"query parameter {name!r} must be an integer") from None
    if value < low or (high is not None and value > high):
        raise ApiError(400, f"query parameter {name!r} must be between {low} and {high}")
    return value


def _page(query, serializer, order):
    """A list answer: {"items", "total", "limit", "offset"} (newest first where it matters)."""
    limit = _int_arg("limit", 100, 1, MAX_LIMIT)
    offset = _int_arg("offset", 0, 0)
    total = db.session.scalar(db.select(db.func.count()).select_from(query.subquery()))
    rows = db.session.scalars(query.order_by(order).limit(limit).offset(offset)).all()
    return jsonify({"items": [serializer(r) for r in rows], "total": total,
                    "limit": limit, "offset": offset})


def _ferry(call, *args, http_status=409, **kwargs):
    """Call a service; its NotFound is a 404 and any other FerryError an `http_status`."""
    try:
        return call(*args, **kwargs)
    except NotFound as exc:
        raise ApiError(404, str(exc)) from None
    except FerryError as exc:
        db.session.rollback()
        raise ApiError(http_status, str(exc)) from None


# --- who am I, the document ----------------------------------------------------------


@bp.route("/openapi.json")
def openapi():
    """The OpenAPI 3 document of this API (no token needed)."""
    from app.api.openapi import document  # its schemas load the typed blobs: here, not at start
    return jsonify(document())


@bp.route("/me")
def me():
    """The token's user and role."""
    return jsonify({"username": g.api_user.username, "role": g.api_user.role})


# --- compute resources and sync ------------------------------------------------------


@bp.route("/compute-resources")
def list_compute_resources():
    """Compute resources, by name."""
    query = _filtered(db.select(ComputeResource), text={"status": ComputeResource.status},
                      choices={"status": status.RESOURCE_STATUSES})
    return _page(query, out.compute_resource, ComputeResource.name)


@bp.route("/compute-resources/<int:resource_id>")
def get_compute_resource(resource_id):
    """One compute resource."""
    return jsonify(out.compute_resource(_get(ComputeResource, resource_id, "compute resource")))


@bp.route("/compute-resources/<int:resource_id>/maintenance", methods=["POST"])
@OPERATOR
def set_maintenance(resource_id):
    """Put a compute resource in maintenance ({"on": true}) or take it out ({"on": false})."""
    on = _field(_body(), "on", bool, required=True)
    _get(ComputeResource, resource_id, "compute resource")
    resource = resources.set_maintenance(resource_id, on, by=g.api_user)
    return jsonify(out.compute_resource(resource))


@bp.route("/compute-resources/<int:resource_id>/sync", methods=["POST"])
@OPERATOR
def sync_compute_resource(resource_id):
    """Queue an inventory sync of one compute resource; follow it at /jobs/{id}."""
    from app.services import inventory
    resource = _get(ComputeResource, resource_id, "compute resource")
    job = inventory.enqueue_sync(resource, by=g.api_user)
    return jsonify({"jobs": [out.job(job)]}), 202


@bp.route("/sync", methods=["POST"])
@OPERATOR
def sync_all():
    """Queue an inventory sync of every compute resource."""
    from app.services import inventory
    return jsonify({"jobs": [out.job(j) for j in inventory.enqueue_sync_all(by=g.api_user)]}), 202


@bp.route("/jobs/<int:job_id>")
def get_job(job_id):
    """A background job's status and result."""
    return jsonify(out.job(_get(Job, job_id, "job")))


# --- servers ---------------------------------------------------------------------------


@bp.route("/servers")
def list_servers():
    """Servers, filtered by compute resource, state or a part of the name."""
    query = _filtered(db.select(Server), text={"state": Server.state},
                      ids={"compute_resource_id": Server.compute_resource_id})
    if _str_arg("name"):
        query = query.where(_matches(Server.name, _str_arg("name"), contains=True))
    return _page(query, out.server, Server.name)


@bp.route("/servers/<int:server_id>")
def get_server(server_id):
    """One server with its disks and addresses."""
    return jsonify(out.server(_get(Server, server_id, "server")))


# --- preflight and migration groups ------------------------------------------------------


def _migration_request(body):
    """A migration.Request from a JSON body (types checked here, meaning by the service)."""
    from app.services import migration
    server_ids = _field(body, "server_ids", list, required=True)
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 < i <= ID_MAX
               for i in server_ids):
        raise ApiError(400, "'server_ids' must be a list of server ids")
    if not server_ids or len(set(server_ids)) != len(server_ids):
        raise ApiError(400, "'server_ids' must name at least one server, each once")
    destination_id = _field(body, "destination_id", int, required=True)
    if not 0 < destination_id <= ID_MAX:
        raise ApiError(400, "'destination_id' is not a compute resource id")
    convert_to = _field(body, "convert_to", str, nullable=True)
    if convert_to is not None and convert_to not in migration.CONVERSIONS:
        raise ApiError(400, f"'convert_to' must be one of {', '.join(migration.CONVERSIONS)}")
    # Ids that name nothing are a 404 here; what the service refuses after that is a
    # conflict with the current state (mixed states, a server already migrating...).
    for server_id in server_ids:
        _get(Server, server_id, "server")
    _get(ComputeResource, destination_id, "compute resource")
    return migration.Request(
        server_ids=tuple(server_ids),
        destination_id=destination_id,
        live=_field(body, "live", bool, True),
        preserve_ip=_field(body, "preserve_ip", bool, True),
        convert_to=convert_to,
        allow_postcopy=_field(body, "allow_postcopy", bool, False),
        acknowledge_warnings=_field(body, "acknowledge_warnings", bool, False))


@bp.route("/preflight", methods=["POST"])
@OPERATOR
def preflight():
    """Run the preflight checks of a migration without starting it (it probes the nodes)."""
    from app.services import migration
    return jsonify(_ferry(migration.dry_run, _migration_request(_body())))


@bp.route("/migration-groups", methods=["POST"])
@OPERATOR
def create_migration_group():
    """Start a migration group: 201 when it runs, 409 when the state, preflight or limits refuse it."""
    from app.services import migration
    group = _ferry(migration.start_group, _migration_request(_body()), user=g.api_user)
    if group.status == status.MIGRATION_FAILED:
        reason = group.tasks[0].error if group.tasks else "the group did not start"
        raise ApiError(409, reason, code="refused", group=group.id)
    return jsonify(out.group(group)), 201


@bp.route("/migration-groups")
def list_migration_groups():
    """Migration groups, newest first, optionally by status."""
    query = _filtered(db.select(MigrationGroup), text={"status": MigrationGroup.status})
    return _page(query, lambda grp: out.group(grp, tasks=False), MigrationGroup.id.desc())


@bp.route("/migration-groups/<int:group_id>")
def get_migration_group(group_id):
    """One migration group with its tasks and their progress."""
    return jsonify(out.group(_get(MigrationGroup, group_id, "migration group")))


@bp.route("/migration-groups/<int:group_id>/report")
def migration_group_report(group_id):
    """The group's report: per server outcome, downtime, bytes, time per phase, timeline."""
    from app.services import migration
    return jsonify(migration.group_report(_get(MigrationGroup, group_id, "migration group")))


@bp.route("/migration-groups/<int:group_id>/cancel", methods=["POST"])
@OPERATOR
def cancel_migration_group(group_id):
    """Ask every unfinished task of the group to stop; the running job aborts and cleans up."""
    from app.services import migration
    group = _get(MigrationGroup, group_id, "migration group")
    active = [t for t in group.tasks if t.status not in status.MIGRATION_DONE]
    if not active:
        raise ApiError(409, f"migration group {group.id} has already ended ({group.status})")
    for task in active:
        _ferry(migration.request_cancel, task.id, user=g.api_user, http_status=409)
    return jsonify(out.group(group)), 202


@bp.route("/tasks")
def list_tasks():
    """Migration tasks, newest first, by status, group or server."""
    query = _filtered(db.select(MigrationTask), text={"status": MigrationTask.status},
                      ids={"group_id": MigrationTask.group_id,
                           "server_id": MigrationTask.server_id})
    return _page(query, lambda t: out.task(t, events=False), MigrationTask.id.desc())


@bp.route("/tasks/<int:task_id>")
def get_task(task_id):
    """One task: status, phase, progress, ETA, result and its timeline of events."""
    return jsonify(out.task(_get(MigrationTask, task_id, "migration task")))


@bp.route("/tasks/<int:task_id>/cancel", methods=["POST"])
@OPERATOR
def cancel_task(task_id):
    """Ask a task to stop."""
    from app.services import migration
    _get(MigrationTask, task_id, "migration task")
    task = _ferry(migration.request_cancel, task_id, user=g.api_user, http_status=409)
    return jsonify(out.task(task)), 202


# --- evacuations -------------------------------------------------------------------------


@bp.route("/compute-resources/<int:resource_id>/evacuations", methods=["POST"])
@OPERATOR
def plan_evacuation(resource_id):
    """Plan the evacuation of a compute resource (replaces an older unapproved plan)."""
    from app.services import evacuation
    body = _body()
    _get(ComputeResource, resource_id, "compute resource")
    evac = _ferry(evacuation.make_plan, resource_id, user=g.api_user,
                  live=_field(body, "live", bool, True),
                  preserve_ip=_field(body, "preserve_ip", bool, True))
    return jsonify(out.evacuation(evac)), 201


@bp.route("/compute-resources/<int:resource_id>/return", methods=["POST"])
@OPERATOR
def plan_return(resource_id):
    """Plan moving back the servers the last evacuation took off this compute resource."""
    from app.services import evacuation
    _get(ComputeResource, resource_id, "compute resource")
    return jsonify(out.evacuation(_ferry(evacuation.plan_return, resource_id, user=g.api_user,
                                         http_status=409))), 201


@bp.route("/evacuations")
def list_evacuations():
    """Evacuations, newest first, by compute resource or status."""
    query = _filtered(db.select(Evacuation), text={"status": Evacuation.status},
                      ids={"compute_resource_id": Evacuation.compute_resource_id})
    return _page(query, out.evacuation, Evacuation.id.desc())


@bp.route("/evacuations/<int:evacuation_id>")
def get_evacuation(evacuation_id):
    """One evacuation, its plan and (once approved) its group."""
    from app.services import evacuation
    _get(Evacuation, evacuation_id, "evacuation")
    return jsonify(out.evacuation(_ferry(evacuation.get, evacuation_id)))


@bp.route("/evacuations/<int:evacuation_id>/approve", methods=["POST"])
@OPERATOR
def approve_evacuation(evacuation_id):
    """Approve a plan: the node goes into maintenance and one group runs the moves."""
    from app.services import evacuation
    body = _body()
    _get(Evacuation, evacuation_id, "evacuation")
    evac = _ferry(evacuation.approve, evacuation_id, user=g.api_user, http_status=409,
                  acknowledge_warnings=_field(body, "acknowledge_warnings", bool, True))
    return jsonify(out.evacuation(evac)), 202


# --- webhooks ----------------------------------------------------------------------------


@bp.route("/webhook-events")
def list_webhook_events():
    """Alerts received from monitoring tools and what Ferry did, newest first."""
    query = db.select(WebhookEvent).outerjoin(WebhookSource)
    query = _filtered(query, text={"source": WebhookSource.name, "action": WebhookEvent.action},
                      ids={"compute_resource_id": WebhookEvent.compute_resource_id},
                      choices={"action": status.WEBHOOK_ACTIONS})
    return _page(query, out.webhook_event, WebhookEvent.id.desc())


@bp.route("/webhook-sources")
@ADMIN
def list_webhook_sources():
    """The monitoring tools allowed to call /hooks/<name> (never their tokens)."""
    return _page(db.select(WebhookSource), out.webhook_source, WebhookSource.name)

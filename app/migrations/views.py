"""Migrations in the browser: the dialog, preflight, start, progress, cancel, history, reports.

One URL serves a page and its polling fragment (HX-Request); a fragment
stops polling once its subject is done (no trigger, HTTP 286).
"""
from datetime import datetime, time, timezone

from flask import Blueprint, Response, abort, jsonify, render_template, request, url_for
from flask_login import current_user

from app import status
from app.access import require_role
from app.csvsafe import csv_text
from app.errors import FerryError
from app.extensions import db
from app.migrations.chart import memory_chart
from app.models import ComputeResource, MigrationGroup, MigrationTask, Server

bp = Blueprint("migrations", __name__, url_prefix="/migrations")

STOP_POLLING = 286  # htmx ends an `every 1s` poll on this status
AUTO = "auto"


def _resources():
    return db.session.scalars(db.select(ComputeResource).order_by(ComputeResource.name)).all()


def _selected_servers(values):
    """The servers whose ids were posted, in name order; unknown ids are ignored."""
    ids = {int(v) for v in values if str(v).isdigit()}
    if not ids:
        return []
    return db.session.scalars(db.select(Server).where(Server.id.in_(ids)).order_by(Server.name)).all()


def _options(form):
    """MigrationOptions from the dialog's fields."""
    from app.services import preflight_checks as checks
    return checks.MigrationOptions(live=form.get("live") == "1",
                                   preserve_ip=form.get("preserve_ip") == "1",
                                   convert_to=form.get("convert_to") or None)


def _request(form, servers, destination_id):
    """The engine's Request from the dialog's fields."""
    from app.services import migration
    options = _options(form)
    return migration.Request(server_ids=tuple(s.id for s in servers), destination_id=destination_id,
                             live=options.live, preserve_ip=options.preserve_ip,
                             convert_to=options.convert_to,
                             acknowledge_warnings=form.get("acknowledge") == "1")


def _destination(form, servers):
    """(destination id, note) from the form; "choose automatically" asks the stored-facts checks."""
    from app.services import placement
    chosen = form.get("destination", "")
    if chosen.isdigit():
        return int(chosen), None
    if chosen != AUTO:
        raise FerryError("choose a destination compute resource")
    best, why_not = placement.choose_destination(servers, _resources(), _options(form))
    if best is None:
        detail = "; ".join(f"{name}: {why}" for name, why in (why_not or {}).items())
        raise FerryError("No compute resource can take every selected server"
                         + (f" ({detail})" if detail else "") + ".")
    return best.id, (f"Chosen automatically: {best.name}, the compute resource with the most "
                     "free memory among those that pass the checks.")


@bp.route("/new")
@require_role(status.ROLE_OPERATOR)
def new():
    """The migrate dialog for the servers checked in the list (?server=ID&server=ID)."""
    from app.services import migration
    from app.services import preflight_checks as checks
    servers = _selected_servers(request.args.getlist("server"))
    running = bool(servers) and all(s.state == status.SERVER_RUNNING for s in servers)
    return render_template("migrations/_dialog.html", servers=servers, resources=_resources(),
                           mixed=checks.mixed_states(servers), live=running, conversions=migration.CONVERSIONS)


@bp.route("/check", methods=["POST"])
def check():
    """Run the preflight (a dry run on the real nodes) and answer with the results fragment."""
    from app.services import migration
    from app.services import preflight_checks as checks
    servers = _selected_servers(request.form.getlist("server"))
    context = {"report": None, "error": None, "note": None, "destination_id": None}
    try:
        if checks.mixed_states(servers):
            raise FerryError(checks.mixed_states(servers))
        destination_id, context["note"] = _destination(request.form, servers)
        context["destination_id"] = destination_id
        context["destination"] = db.session.get(ComputeResource, destination_id)
        context["report"] = migration.dry_run(_request(request.form, servers, destination_id))
    except FerryError as exc:
        context["error"] = str(exc)
    return render_template("migrations/_preflight.html", **context)


@bp.route("/start", methods=["POST"])
def start():
    """Start the group (the engine runs the preflight again and refuses what fails), then show it."""
    from app.services import migration
    from app.services import preflight_checks as checks
    servers = _selected_servers(request.form.getlist("server"))
    try:
        if checks.mixed_states(servers):
            raise FerryError(checks.mixed_states(servers))
        destination_id = request.form.get("checked_destination", "")
        if not destination_id.isdigit():
            destination_id, _ = _destination(request.form, servers)
        group = migration.start_group(_request(request.form, servers, int(destination_id)),
                                      user=current_user)
    except FerryError as exc:
        return render_template("migrations/_preflight.html", report=None, error=str(exc),
                               note=None, destination_id=None)
    target = url_for("migrations.group", group_id=group.id)
    return "", 200, {"HX-Redirect": target}


# ---------------------------------------------------------------- groups and tasks

def _group_or_404(group_id):
    return db.session.get(MigrationGroup, group_id) or abort(404)


def _task_or_404(task_id):
    return db.session.get(MigrationTask, task_id) or abort(404)


def done(subject):
    """True once a group or task can no longer change."""
    return subject.status in status.MIGRATION_DONE


@bp.route("/groups/<int:group_id>")
def group(group_id):
    """A group's page, or its tasks fragment for the poll."""
    found = _group_or_404(group_id)
    if request.headers.get("HX-Request"):
        return render_template("migrations/_group.html", group=found), \
            STOP_POLLING if done(found) else 200
    return render_template("migrations/group.html", group=found)


@bp.route("/tasks/<int:task_id>")
def task(task_id):
    """A task's page, or its progress fragment for the poll."""
    found = _task_or_404(task_id)
    context = {"task": found, "chart": memory_chart(found.progress_record.history)}
    if request.headers.get("HX-Request"):
        return render_template("migrations/_task.html", **context), \
            STOP_POLLING if done(found) else 200
    return render_template("migrations/task.html", **context)


@bp.route("/tasks/<int:task_id>/cancel", methods=["POST"])
@require_role(status.ROLE_OPERATOR)
def cancel(task_id):
    """Ask the running job to abort the task; answer with the task fragment."""
    from app.services import migration
    found = _task_or_404(task_id)
    error = None
    try:
        migration.request_cancel(found.id, user=current_user)
    except FerryError as exc:
        error = str(exc)
    db.session.refresh(found)
    return render_template("migrations/_task.html", task=found, cancel_error=error, oob_actions=True,
                           chart=memory_chart(found.progress_record.history))


# ---------------------------------------------------------------- history and reports

def _day(value, end=False):
    """A yyyy-mm-dd filter as the start (or end) of that day in UTC, or None."""
    try:
        day = datetime.strptime(value, "%Y-%m-%d").date()
    except (TypeError, ValueError):
        return None
    return datetime.combine(day, time.max if end else time.min, tzinfo=timezone.utc)


@bp.route("/")
def index():
    """Migration groups, newest first, filtered by status, compute resource and date."""
    filters = {k: request.args.get(k, "") for k in ("status", "node", "since", "until")}
    query = db.select(MigrationGroup).order_by(MigrationGroup.id.desc())
    if filters["status"] in status.MIGRATION_DONE + status.MIGRATION_ACTIVE:
        query = query.where(MigrationGroup.status == filters["status"])
    if filters["node"].isdigit():
        node = int(filters["node"])
        query = query.where(MigrationGroup.tasks.any(
            (MigrationTask.source_id == node) | (MigrationTask.destination_id == node)))
    since, until = _day(filters["since"]), _day(filters["until"], end=True)
    if since:
        query = query.where(MigrationGroup.created_at >= since)
    if until:
        query = query.where(MigrationGroup.created_at <= until)
    context = {"groups": db.session.scalars(query.limit(200)).all(), "filters": filters,
               "resources": _resources(),
               "statuses": status.MIGRATION_ACTIVE + status.MIGRATION_DONE}
    if request.headers.get("HX-Request") and request.headers.get("HX-Target") == "groups-table":
        return render_template("migrations/_groups.html", **context)
    return render_template("migrations/index.html", **context)


@bp.route("/groups/<int:group_id>/report.json")
def report_json(group_id):
    """The group's report as JSON, as a download."""
    from app.services import migration
    report = migration.group_report(_group_or_404(group_id))
    response = jsonify(report)
    response.headers["Content-Disposition"] = f"attachment; filename=ferry-group-{group_id}.json"
    return response


REPORT_COLUMNS = ("task", "server", "source", "destination", "mode", "status", "downtime_ms",
                  "total_ms", "bytes", "started_at", "finished_at", "error")


def report_csv_text(report):
    """One CSV row per server: outcome, downtime, bytes, and a column per phase's time."""
    phases = sorted({name for t in report["tasks"] for name in (t.get("phases") or {})})
    header = list(REPORT_COLUMNS) + [f"phase_{name}" for name in phases]
    return csv_text([header] + [[row.get(c) for c in REPORT_COLUMNS]
                                + [(row.get("phases") or {}).get(name) for name in phases]
                                for row in report["tasks"]])


@bp.route("/groups/<int:group_id>/report.csv")
def report_csv(group_id):
    """The group's report as CSV, as a download."""
    from app.services import migration
    report = migration.group_report(_group_or_404(group_id))
    return Response(report_csv_text(report), mimetype="text/csv", headers={
        "Content-Disposition": f"attachment; filename=ferry-group-{group_id}.csv"})


@bp.route("/known-issues")
def known_issues():
    """The reference's limits, each one a preflight check, and the backup-compatibility table."""
    return render_template("migrations/known_issues.html")

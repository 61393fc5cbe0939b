"""Evacuation pages: the plan as it will run, Approve, its progress, and Return servers.

The plan shown is the stored plan approval runs (services.evacuation): what
a person approved is exactly what moves.
"""
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user

from app import status
from app.access import require_role
from app.errors import FerryError, NotFound
from app.extensions import db
from app.models import Evacuation

# services.evacuation is imported where it is used: it loads the engine and libvirt, and every CLI
# command and web worker imports this module.

bp = Blueprint("evacuations", __name__, url_prefix="/evacuations")

STOP_POLLING = 286


def _get_or_404(evacuation_id):
    from app.services import evacuation
    try:
        return evacuation.get(evacuation_id)  # refreshed from its group
    except NotFound:
        abort(404)


@bp.route("/")
def index():
    """Recent evacuations and returns, newest first."""
    recent = db.session.scalars(db.select(Evacuation).order_by(Evacuation.id.desc()).limit(100)).all()
    return render_template("evacuations/index.html", evacuations=recent)


@bp.route("/<int:evacuation_id>")
def detail(evacuation_id):
    """The plan page, or its status fragment for the poll (HTTP 286 once it has ended)."""
    evac = _get_or_404(evacuation_id)
    if request.headers.get("HX-Request"):
        return render_template("evacuations/_status.html", evac=evac), \
            STOP_POLLING if evac.status != status.EVACUATION_RUNNING else 200
    return render_template("evacuations/detail.html", evac=evac)


def _planned(resource_id, make):
    """Make a plan with `make` and show it; a refusal goes back to the resource page with why."""
    try:
        evac = make(resource_id, user=current_user)
    except NotFound:
        abort(404)
    except FerryError as exc:
        flash(str(exc), "error")
        return redirect(url_for("resources.detail", resource_id=resource_id))
    return redirect(url_for("evacuations.detail", evacuation_id=evac.id))


@bp.route("/resource/<int:resource_id>/plan", methods=["POST"])
@require_role(status.ROLE_OPERATOR)
def plan(resource_id):
    """Plan the evacuation of a compute resource (nothing moves until someone approves)."""
    from app.services import evacuation
    return _planned(resource_id, evacuation.make_plan)


@bp.route("/resource/<int:resource_id>/return", methods=["POST"])
@require_role(status.ROLE_OPERATOR)
def plan_return(resource_id):
    """Plan moving back the servers the last evacuation took away."""
    from app.services import evacuation
    return _planned(resource_id, evacuation.plan_return)


@bp.route("/<int:evacuation_id>/approve", methods=["POST"])
@require_role(status.ROLE_OPERATOR)
def approve(evacuation_id):
    """Run the stored plan: the node goes into maintenance and one migration group moves the servers."""
    from app.services import evacuation
    evac = _get_or_404(evacuation_id)
    try:
        # The page shows every warning of the plan; approving it is the acknowledgement.
        evacuation.approve(evac.id, user=current_user, acknowledge_warnings=True)
    except FerryError as exc:
        flash(str(exc), "error")
    return redirect(url_for("evacuations.detail", evacuation_id=evac.id))

"""Compute resource pages. Connection work happens in jobs; these views only queue and show it."""
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user

from app import status
from app.access import require_role
from app.errors import FerryError, NotFound
from app.extensions import db
from app.models import Evacuation
from app.services import jobs, resources

# services.inventory is imported where it is used: it loads cryptography through the certificates,
# and every CLI command and web worker imports this module.

bp = Blueprint("resources", __name__, url_prefix="/resources")


def _get_or_404(resource_id):
    """The resource or a 404 page."""
    try:
        return resources.get(resource_id)
    except NotFound:
        abort(404)


@bp.route("/new", methods=["GET", "POST"])
@require_role(status.ROLE_ADMIN)
def new():
    """Add a compute resource; its host key is fetched and pinned, then shown."""
    from app.services import inventory
    form = request.form
    if request.method == "POST":
        try:
            resource = resources.add(
                form.get("name", "").strip(), form.get("host", "").strip(),
                form.get("user", "root").strip(), form.get("key_path", "").strip(),
                int(form.get("port") or 22),
                backup_dir=form.get("backup_dir", "").strip() or None,
                storage_tags=[t.strip() for t in form.get("storage_tags", "").split(",") if t.strip()],
                expect_fingerprint=form.get("fingerprint", "").strip() or None,
                by=current_user)
        except (FerryError, ValueError) as exc:
            return render_template("resources/new.html", form=form, error=str(exc)), 400
        flash(f"Added {resource.name}. Pinned SSH host key {resource.host_key_fingerprint} — "
              "check it matches the node before you trust it.", "success")
        inventory.enqueue_sync(resource, by=current_user)
        return redirect(url_for("resources.detail", resource_id=resource.id))
    return render_template("resources/new.html", form=form, error=None)


@bp.route("/<int:resource_id>")
def detail(resource_id):
    """Facts, servers, IP blocks and storage of one compute resource."""
    resource = _get_or_404(resource_id)
    evacuations = db.session.scalars(db.select(Evacuation).filter_by(compute_resource_id=resource.id)
                                     .order_by(Evacuation.id.desc()).limit(5)).all()
    return render_template("resources/detail.html", resource=resource, facts=resource.facts or {},
                           evacuations=evacuations)


@bp.route("/<int:resource_id>/test", methods=["POST"])
def test(resource_id):
    """Queue a connection test; answer with the job fragment, which polls until it ends."""
    resource = _get_or_404(resource_id)
    job = jobs.enqueue("test_connection", {"resource_id": resource.id}, user=current_user)
    return render_template("jobs/_job.html", job=job)


@bp.route("/<int:resource_id>/sync", methods=["POST"])
def sync(resource_id):
    """Queue an inventory sync; answer with the job fragment."""
    from app.services import inventory
    job = inventory.enqueue_sync(_get_or_404(resource_id), by=current_user)
    return render_template("jobs/_job.html", job=job)


@bp.route("/<int:resource_id>/maintenance", methods=["POST"])
@require_role(status.ROLE_OPERATOR)
def maintenance(resource_id):
    """Put the resource in or out of maintenance."""
    resource = _get_or_404(resource_id)
    resources.set_maintenance(resource.id, request.form.get("on") == "1", by=current_user)
    return redirect(url_for("resources.detail", resource_id=resource.id))

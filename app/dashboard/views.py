"""Dashboard view."""
import math

from flask import Blueprint, render_template, request
from sqlalchemy import func

from app import status
from app.extensions import db
from app.models import ComputeResource, Job, MigrationTask, Server
from app.services import workers

bp = Blueprint("dashboard", __name__)


def resource_rows():
    """Each compute resource with its running and total server counts."""
    counts = dict(db.session.execute(
        db.select(Server.compute_resource_id, func.count()).where(Server.state != status.SERVER_MISSING)
        .group_by(Server.compute_resource_id)).all())
    running = dict(db.session.execute(
        db.select(Server.compute_resource_id, func.count()).where(Server.state == status.SERVER_RUNNING)
        .group_by(Server.compute_resource_id)).all())
    return [(r, running.get(r.id, 0), counts.get(r.id, 0)) for r in
            db.session.scalars(db.select(ComputeResource).order_by(ComputeResource.name))]


@bp.route("/")
def index():
    """Compute resources with status and load, running migrations, recent jobs."""
    migrations = db.session.scalars(db.select(MigrationTask).where(
        MigrationTask.status.in_(status.MIGRATION_ACTIVE)).order_by(MigrationTask.id)).all()
    jobs = db.session.scalars(db.select(Job).order_by(Job.id.desc()).limit(8)).all()
    silence = workers.silent_for()
    context = {"rows": resource_rows(), "migrations": migrations, "jobs": jobs,
               "worker_silence": silence, "worker_never_seen": silence == math.inf}
    if request.headers.get("HX-Request") and request.args.get("fragment") == "resources":
        return render_template("dashboard/_resources.html", **context)
    if request.headers.get("HX-Request") and request.args.get("fragment") == "workers":
        return render_template("dashboard/_workers.html", **context)
    return render_template("dashboard/index.html", **context)

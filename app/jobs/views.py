"""Job detail: one URL for the page and the polling fragment."""
from flask import Blueprint, abort, render_template, request

from app.extensions import db
from app.models import Job

bp = Blueprint("jobs", __name__, url_prefix="/jobs")

STOP_POLLING = 286  # htmx stops a `hx-trigger="every …"` poll on this status


@bp.route("/")
def index():
    """The most recent jobs."""
    recent = db.session.scalars(db.select(Job).order_by(Job.id.desc()).limit(100)).all()
    return render_template("jobs/index.html", jobs=recent)


@bp.route("/<int:job_id>")
def detail(job_id):
    """The job page, or its fragment for htmx (HTTP 286 once the job is done)."""
    job = db.session.get(Job, job_id) or abort(404)
    if request.headers.get("HX-Request"):
        return render_template("jobs/_job.html", job=job), STOP_POLLING if job.done else 200
    return render_template("jobs/detail.html", job=job)

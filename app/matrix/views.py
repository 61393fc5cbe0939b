"""The migratability matrix page, computed on every request from what sync stored."""
from flask import Blueprint, render_template

from app import status
from app.extensions import db
from app.matrix import fit
from app.models import ComputeResource, Server

bp = Blueprint("matrix", __name__, url_prefix="/matrix")


@bp.route("/")
def index():
    """Every server against every compute resource; the reason of each cell on hover."""
    servers = db.session.scalars(db.select(Server).where(Server.state != status.SERVER_MISSING)
                                 .order_by(Server.name)).all()
    resources = db.session.scalars(db.select(ComputeResource).order_by(ComputeResource.name)).all()
    return render_template("matrix/index.html", rows=fit.matrix(servers, resources),
                           resources=resources, labels=LABELS)


LABELS = {fit.LIVE: "live", fit.OFFLINE: "offline only", fit.NO: "no", fit.HERE: "here"}

"""Servers list: one URL for the page and the htmx table fragment."""
from flask import Blueprint, render_template, request

from app import status
from app.extensions import db
from app.models import ComputeResource, Server

bp = Blueprint("servers", __name__, url_prefix="/servers")


@bp.route("/")
def index():
    """All servers, filtered by ?state= and ?resource= (a compute resource id)."""
    state = request.args.get("state", "")
    resource_id = request.args.get("resource", type=int)
    query = db.select(Server).order_by(Server.name)
    if state in status.SERVER_STATES:
        query = query.filter_by(state=state)
    if resource_id:
        query = query.filter_by(compute_resource_id=resource_id)
    context = {
        "servers": db.session.scalars(query).all(),
        "state": state, "resource_id": resource_id,
        "resources": db.session.scalars(db.select(ComputeResource).order_by(ComputeResource.name)).all(),
    }
    # The filter form swaps only the table; a full load or a bookmark gets the page.
    if request.headers.get("HX-Request") and request.headers.get("HX-Target") == "servers-table":
        return render_template("servers/_table.html", **context)
    return render_template("servers/index.html", **context)

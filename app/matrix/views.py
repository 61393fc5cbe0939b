"""The migratability matrix page, computed on every request from what sync stored.

A rack has thousands of servers and hundreds of compute resources, and every
cell runs the pure checks: the page shows a window of rows and columns at a
time (filterable by source compute resource and server name), never the whole
product.
"""
from flask import Blueprint, render_template, request
from sqlalchemy.orm import selectinload

from app import status
from app.extensions import db
from app.models import ComputeResource, Server
from app.search import like_pattern

# services.placement is imported where it is used: it loads the preflight, the inventory and
# cryptography, and every CLI command and web worker imports this module.

bp = Blueprint("matrix", __name__, url_prefix="/matrix")

ROWS = 25
COLUMNS = 12


def _window(total, size, number):
    """(page, pages) for a 1-based page number clamped into range."""
    pages = max(1, -(-total // size))
    return max(1, min(number, pages)), pages


@bp.route("/")
def index():
    """Servers against compute resources, ?page= for rows, ?cols= for columns; reasons on hover."""
    from app.services import placement
    resource_id = request.args.get("resource", type=int)
    q = request.args.get("q", "").strip()[:100].replace("\x00", "")
    query = db.select(Server).where(Server.state != status.SERVER_MISSING)
    if resource_id:
        query = query.filter_by(compute_resource_id=resource_id)
    if q:
        query = query.where(Server.name.ilike(like_pattern(q), escape="\\"))
    total = db.session.scalar(db.select(db.func.count()).select_from(query.subquery()))
    page, pages = _window(total, ROWS, request.args.get("page", 1, type=int))
    servers = db.session.scalars(
        query.options(selectinload(Server.compute_resource), selectinload(Server.disks),
                      selectinload(Server.ip_addresses))
        .order_by(Server.name, Server.id).limit(ROWS).offset((page - 1) * ROWS)).all()
    all_resources = db.session.scalars(db.select(ComputeResource).order_by(ComputeResource.name)).all()
    cols, col_pages = _window(len(all_resources), COLUMNS, request.args.get("cols", 1, type=int))
    resources = all_resources[(cols - 1) * COLUMNS:cols * COLUMNS]
    labels = {placement.LIVE: "live", placement.OFFLINE: "offline only", placement.NO: "no",
              placement.HERE: "here"}
    return render_template("matrix/index.html", rows=placement.matrix(servers, resources),
                           resources=resources, all_resources=all_resources, labels=labels,
                           total=total, page=page, pages=pages, cols=cols, col_pages=col_pages,
                           resource_id=resource_id, q=q, rows_per_page=ROWS)


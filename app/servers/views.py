"""Servers list: one URL for the page and the htmx table fragment, a page of rows at a time."""
from flask import Blueprint, render_template, request
from sqlalchemy.orm import selectinload

from app import status
from app.extensions import db
from app.models import ComputeResource, Server

bp = Blueprint("servers", __name__, url_prefix="/servers")

# A rack has thousands of servers; nobody reads them all on one page. Rendering the rows is
# most of the page's time (about 0.4 ms a row), so a page is short.
PAGE_SIZE = 50


def _like(text):
    """A LIKE pattern that matches text literally anywhere in a name."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@bp.route("/")
def index():
    """Servers filtered by ?state=, ?resource= (an id) and ?q= (part of the name), ?page=N."""
    state = request.args.get("state", "")
    resource_id = request.args.get("resource", type=int)
    q = request.args.get("q", "").strip()[:100]
    page = max(1, min(request.args.get("page", 1, type=int), 10**6))
    where = []
    if state in status.SERVER_STATES:
        where.append(Server.state == state)
    if resource_id:
        where.append(Server.compute_resource_id == resource_id)
    if q:
        where.append(Server.name.ilike(_like(q.replace("\x00", "")), escape="\\"))
    query = db.select(Server).where(*where)
    total = db.session.scalar(db.select(db.func.count(Server.id)).where(*where))
    pages = max(1, -(-total // PAGE_SIZE))
    page = min(page, pages)
    # The page's servers, their disks, and of their compute resources only the names: a fixed
    # number of queries, and none of the resources' facts documents decoded.
    servers = db.session.scalars(
        query.options(selectinload(Server.compute_resource).load_only(ComputeResource.id,
                                                                      ComputeResource.name),
                      selectinload(Server.disks))
        .order_by(Server.name, Server.id).limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)).all()
    context = {
        "servers": servers, "total": total, "page": page, "pages": pages,
        "first": (page - 1) * PAGE_SIZE + 1 if total else 0, "last": (page - 1) * PAGE_SIZE + len(servers),
        "state": state, "resource_id": resource_id, "q": q,
        "resources": db.session.execute(db.select(ComputeResource.id, ComputeResource.name)
                                        .order_by(ComputeResource.name)).all(),
    }
    # The filter form swaps only the table; a full load or a bookmark gets the page.
    if request.headers.get("HX-Request") and request.headers.get("HX-Target") == "servers-table":
        return render_template("servers/_table.html", **context)
    return render_template("servers/index.html", **context)

"""Servers list: one URL for the page and the htmx table fragment, a page of rows at a time."""
import functools
from dataclasses import dataclass
from typing import NamedTuple

from flask import Blueprint, render_template, request
from flask_login import current_user
from markupsafe import Markup, escape
from sqlalchemy import Integer, any_, bindparam, cast, func, literal_column, null, union_all
from sqlalchemy.dialects.postgresql import ARRAY

from app import status
from app.extensions import db
from app.models import ComputeResource, Disk, Server
from app.search import like_pattern
from app.templating import render_fragment

bp = Blueprint("servers", __name__, url_prefix="/servers")

# A rack has thousands of servers; nobody reads them all on one page. Rendering the rows is
# most of the page's time, so a page is short.
PAGE_SIZE = 50


class ResourceName(NamedTuple):
    """What a row shows of its compute resource: a link to it."""

    id: int
    name: str


class DiskRow(NamedTuple):
    """What a row shows of one of its server's disks."""

    target: str
    format: str
    path: str
    virtual_size: int | None
    allocation: int | None


@dataclass(frozen=True, slots=True)
class ServerRow:
    """One line of the list, read as plain columns (no ORM objects built for a page); frozen
    and hashable, so that a page of them keys the rendered table (templating.render_fragment)."""

    id: int
    name: str
    state: str
    vcpus: int
    memory_mib: int
    snapshot_count: int
    uuid: str
    compute_resource: ResourceName | None
    disks: tuple[DiskRow, ...] = ()


class Filters(NamedTuple):
    """Which filters a request asks for; their values are bound when the query runs."""

    state: bool
    resource: bool
    name: bool

    def where(self) -> list:
        """The WHERE clauses, with the values as bind parameters: state, resource, pattern."""
        where = []
        if self.state:
            where.append(Server.state == bindparam("state"))
        if self.resource:
            where.append(Server.compute_resource_id == bindparam("resource"))
        if self.name:
            where.append(Server.name.ilike(bindparam("pattern"), escape="\\"))
        return where


@functools.cache  # built once per combination of filters: building it cost more than running it
def page_query(filters: Filters):
    """A page of the servers matching `filters` (bound: page_size, skip) with their compute
    resource's id and name and how many servers match: the page an index range on name, the
    count an uncorrelated subquery run once beside it, the resource joined to the page's rows
    only. A page past the end has no row to carry the count."""
    where = filters.where()
    matching = (db.select(func.count()).select_from(Server).where(*where)
                .correlate(None).scalar_subquery())
    return (db.select(Server.id, Server.name, Server.state, Server.vcpus, Server.memory_mib,
                      Server.snapshot_count, Server.uuid, Server.compute_resource_id,
                      ComputeResource.name, matching)
            .outerjoin(ComputeResource, ComputeResource.id == Server.compute_resource_id)
            .where(*where).order_by(Server.name, Server.id)
            .limit(bindparam("page_size")).offset(bindparam("skip")))


@functools.cache  # built once per combination of filters
def count_query(filters: Filters):
    """How many servers match `filters` (for a page past the end, which cannot carry it)."""
    return db.select(func.count(Server.id)).where(*filters.where())


@functools.cache  # built once per choice
def disks_query(with_resources: bool, dialect: str):
    """The disks of the servers `ids`, by server on its index (joined to the page instead,
    PostgreSQL hashed every disk of the fleet). On PostgreSQL `ids` is one array parameter
    (`= ANY(...)`): an expanding IN's fifty parameters were rendered into the statement on
    every request, 0.1 ms of a 3 ms page; SQLite has no arrays. with_resources: and every
    compute resource's id and name for the filter, in the same query (each read was its own
    round trip). Rows are (server_id, id, name, format, path, virtual_size, allocation): a
    disk's name is its target; a compute resource has no server_id and NULL for the rest."""
    on_page = (Disk.server_id == any_(bindparam("ids", type_=ARRAY(Integer)))
               if dialect == "postgresql" else Disk.server_id.in_(bindparam("ids", expanding=True)))
    disks = db.select(Disk.server_id, Disk.id, Disk.target.label("name"), Disk.format,
                      Disk.path, Disk.virtual_size, Disk.allocation).where(on_page)
    if not with_resources:
        return disks.order_by(Disk.target, Disk.id)
    nothing = {key: cast(null(), column.type).label(key) for key, column in (
        ("server_id", Disk.server_id), ("format", Disk.format), ("path", Disk.path),
        ("virtual_size", Disk.virtual_size), ("allocation", Disk.allocation))}
    resources = db.select(nothing["server_id"], ComputeResource.id, ComputeResource.name,
                          nothing["format"], nothing["path"], nothing["virtual_size"],
                          nothing["allocation"])
    # Disks by target, resources by name: one order for both, in the database's collation.
    return union_all(disks, resources).order_by(literal_column("name"), literal_column("id"))


def server_page(filters: Filters, values: dict, page: int, page_size: int = PAGE_SIZE,
                with_resources: bool = False
                ) -> tuple[tuple[ServerRow, ...], int | None, tuple | None]:
    """Page `page` of the servers matching `filters` (their `values`), with their compute
    resource's name and their disks, and how many servers match: two queries whatever the
    size of the fleet. with_resources: and every compute resource's (id, name), read with
    the disks (else None). A page past the end: ((), None, ...)."""
    conn = db.session.connection()
    rows = conn.execute(page_query(filters), {
        **values, "page_size": page_size, "skip": (page - 1) * page_size}).all()
    disks = {row[0]: [] for row in rows}
    resources = [] if with_resources else None
    if disks or with_resources:
        query = disks_query(with_resources, conn.dialect.name)
        for server_id, row_id, name, *disk in conn.execute(query, {"ids": list(disks)}).all():
            if server_id is None:
                resources.append((row_id, name))
            else:
                disks[server_id].append(DiskRow(name, *disk))
    servers = tuple(ServerRow(*columns, ResourceName(resource_id, resource_name)
                              if resource_id is not None else None, tuple(disks[columns[0]]))
                    for *columns, resource_id, resource_name, _ in rows)
    return (servers, (rows[0][-1] if rows else None),
            None if resources is None else tuple(resources))


@bp.route("/")
def index():
    """Servers filtered by ?state=, ?resource= (an id) and ?q= (part of the name), ?page=N."""
    state = request.args.get("state", "")
    resource_id = request.args.get("resource", type=int)
    q = request.args.get("q", "").strip()[:100]
    page = max(1, min(request.args.get("page", 1, type=int), 10**6))
    filters = Filters(state in status.SERVER_STATES, bool(resource_id), bool(q))
    values = {"state": state, "resource": resource_id,
              "pattern": like_pattern(q.replace("\x00", ""))}
    # The filter form swaps only the table; a full load or a bookmark gets the page around it,
    # with the compute resources to filter by.
    whole = not (request.headers.get("HX-Request")
                 and request.headers.get("HX-Target") == "servers-table")
    servers, total, resources = server_page(filters, values, page, with_resources=whole)
    if total is None and page > 1:  # a page past the end (a stale link, a narrower filter)
        total = db.session.scalar(count_query(filters), values)
        if total:
            page = -(-total // PAGE_SIZE)
            servers, _, resources = server_page(filters, values, page, with_resources=whole)
    total = total or 0
    pages = max(1, -(-total // PAGE_SIZE))
    page = min(page, pages)
    context = {
        "servers": servers, "total": total, "page": page, "pages": pages,
        "first": (page - 1) * PAGE_SIZE + 1 if total else 0,
        "last": (page - 1) * PAGE_SIZE + len(servers),
        "state": state, "resource_id": resource_id, "q": q,
    }
    # The table is rendered on its own and placed in the page as one piece: included, each of
    # its few thousand fragments went up through the page's and the layout's templates. The
    # same rows, unchanged, render from a cache.
    table = render_fragment("servers/_table.html",
                            selectable=current_user.has_role(status.ROLE_OPERATOR), **context)
    if not whole:
        return table
    return render_template("servers/index.html", table=table,
                           resource_options=options(resources, resource_id), **context)


@functools.lru_cache(maxsize=16)  # keyed by every (id, name) it lists: never stale
def options(rows: tuple, selected) -> Markup:
    """<option>s for (id, name) rows, `selected` chosen: one string for a list of hundreds,
    not a template loop."""
    return Markup("".join(
        f'<option value="{row_id}"{" selected" if row_id == selected else ""}>{escape(name)}'
        "</option>" for row_id, name in rows))

"""Dashboard view: a page of compute resources with their load, running migrations, jobs.

A fixed number of queries whatever the size of the fleet (tests/unit/test_pages.py counts them).
"""
import functools
import math
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from flask import Blueprint, render_template, request
from flask_login import current_user
from sqlalchemy import bindparam, cast, func, literal, null, union_all
from sqlalchemy.orm import aliased

from app import status
from app.extensions import db
from app.models import ComputeResource, Job, MigrationTask, Server, UTCDateTime
from app.services import workers
from app.templating import ago, render_fragment

bp = Blueprint("dashboard", __name__)


PAGE_SIZE = 50  # compute resources per page: a fleet of hundreds is read a page at a time
MIGRATIONS_SHOWN = 20  # running migrations listed; an evacuation's hundred are on its page
JOBS_SHOWN = 8
MIGRATION_KIND, JOB_KIND, BEAT_KIND = "migration", "job", "beat"  # the short lists' rows


@dataclass(frozen=True)
class ResourceRow:
    """One line of the dashboard's table: a compute resource and its load, read in SQL; frozen
    and hashable, so that a page of them keys the rendered table (templating.render_fragment)."""

    id: int
    name: str
    status: str
    status_reason: str | None
    host: str
    port: int
    last_synced_at: datetime | None
    running: int
    total: int
    memory_total_mib: float | None
    memory_free_mib: float | None
    os_name: str | None
    synced_ago: str  # "3 min ago": worked out here, so that the rendered table can be kept

    @property
    def memory_used_percent(self):
        """How full the host's memory is, 0-100, or None when unknown."""
        total, free = self.memory_total_mib, self.memory_free_mib
        if not total or free is None:
            return None
        return round(100 * (total - free) / total)


@functools.cache  # built once, on first use: building it cost more than running it
def resource_rows_query():
    """One page of compute resources (bound: page_size, skip) with their running and total
    server counts, and how many compute resources there are, in one query whatever the size
    of the fleet.

    The page is chosen first, on narrow rows (id, and the number of compute resources as a
    window count over them); only its rows are then widened: their facts documents read (of
    each, the two facts the table shows) and their servers counted by correlated subqueries
    (an index on compute resource and state answers them). Counting and reading facts for
    every compute resource before the limit took half of the query's time at 200.
    """
    def servers(*where):
        return (db.select(func.count()).select_from(Server)
                .where(Server.compute_resource_id == ComputeResource.id, *where)
                .correlate(ComputeResource).scalar_subquery())
    page = (db.select(ComputeResource.id, func.count().over().label("total"))
            .order_by(ComputeResource.name, ComputeResource.id)
            .limit(bindparam("page_size")).offset(bindparam("skip")).subquery("page"))
    facts = ComputeResource.facts
    return (db.select(ComputeResource.id, ComputeResource.name, ComputeResource.status,
                      ComputeResource.status_reason, ComputeResource.host, ComputeResource.port,
                      ComputeResource.last_synced_at,
                      servers(Server.state == status.SERVER_RUNNING),
                      servers(Server.state != status.SERVER_MISSING),
                      facts[("memory", "total_mib")].as_float(),
                      facts[("memory", "free_mib")].as_float(),
                      facts[("os", "pretty_name")].as_string(), page.c.total)
            .join(page, page.c.id == ComputeResource.id)
            .order_by(ComputeResource.name, ComputeResource.id))


def resource_rows(page: int = 1, page_size: int = PAGE_SIZE
                  ) -> tuple[tuple[ResourceRow, ...], int | None]:
    """Page `page` of compute resources and how many there are; a page past the end has no
    row to carry the count: ((), None)."""
    rows = db.session.connection().execute(resource_rows_query(), {
        "page_size": page_size, "skip": (page - 1) * page_size}).all()
    return (tuple(ResourceRow(*row[:-1], synced_ago=ago(row.last_synced_at)) for row in rows),
            rows[0][-1] if rows else None)


def resource_page(requested: int) -> tuple[tuple[ResourceRow, ...], "Pager"]:
    """The page of compute resources asked for (clamped to those that exist) and its pager:
    one query, two when the page asked for is past the end (a stale link, a shrunk fleet)."""
    rows, total = resource_rows(max(1, requested))
    if total is None:
        total = db.session.scalar(db.select(func.count()).select_from(ComputeResource))
        if total:
            rows, _ = resource_rows(window(requested, total).page)
    return rows, window(requested, total)


class Pager(NamedTuple):
    """The numbers of a pager: the page shown of how many, its first and last item's number
    and how many items there are."""

    page: int
    pages: int
    first: int
    last: int
    total: int


def window(page: int, total: int, page_size: int = PAGE_SIZE) -> Pager:
    """The pager's numbers for `total` items, page clamped to what exists.

    >>> window(3, 120, 50)
    Pager(page=3, pages=3, first=101, last=120, total=120)
    >>> window(9, 0, 50)
    Pager(page=1, pages=1, first=0, last=0, total=0)
    """
    pages = max(1, -(-total // page_size))
    page = max(1, min(page, pages))
    first = (page - 1) * page_size + 1 if total else 0
    return Pager(page, pages, first, min(page * page_size, total), total)


@bp.route("/")
def index():
    """Compute resources with status and load, running migrations, recent jobs; ?fragment=
    resources or workers (htmx's polls) reads and renders that part only."""
    fragment = request.args.get("fragment") if request.headers.get("HX-Request") else None
    if fragment == "workers":
        return render_template("dashboard/_workers.html", **worker_state(workers.silent_for()))
    rows, pager = resource_page(request.args.get("page", 1, type=int))
    # The table is rendered on its own and placed in the page as one piece (included, each of
    # its fragments went up through the page's and the layout's templates); the same rows,
    # unchanged, render from a cache.
    table = render_fragment("dashboard/_resources.html", rows=rows, pager=pager,
                            can_add=current_user.has_role(status.ROLE_ADMIN))
    if fragment == "resources":
        return table
    migrations, migrations_total, jobs, seen = short_lists()
    return render_template("dashboard/index.html", resources_table=table, pager=pager,
                           migrations=migrations, migrations_total=migrations_total,
                           jobs=jobs, **worker_state(workers.silence(seen)))


def worker_state(silence) -> dict:
    """What the banner about workers needs, from the seconds of silence (None while a worker is
    fresh, math.inf when none was ever seen: services.workers.silence)."""
    return {"worker_silence": silence, "worker_never_seen": silence == math.inf}


@dataclass(frozen=True)
class MigrationRow:
    """A running migration as the dashboard lists it: the task and the names it shows."""

    id: int
    status: str
    server: str | None
    source: str | None
    destination: str | None


class JobRow(NamedTuple):
    """A recent job as the dashboard lists it."""

    id: int
    name: str
    status: str
    created_at: datetime | None


@functools.cache  # built once, on first use: building it cost more than running it
def short_lists_query(shown: int = MIGRATIONS_SHOWN, jobs: int = JOBS_SHOWN):
    """The dashboard's short reads in one query (each its own round trip, they were a third of
    the page's time in the database): the first `shown` active migration tasks with their server's
    and nodes' names and how many are active (a window count), the last `jobs` jobs, and one
    row with the newest worker beat. Rows are (kind, id, status, name, source, destination,
    at, total); what a kind does not have is NULL, cast so that every backend reads the types
    of the first part."""
    source, destination = aliased(ComputeResource), aliased(ComputeResource)

    def row(kind, row_id=None, state=None, name=None, source=None, destination=None, at=None,
            total=None):
        """The columns of a row of `kind`, labelled, NULL cast to its column's type."""
        columns = {"kind": literal(kind), "id": row_id, "status": state, "name": name,
                   "source": source, "destination": destination, "at": at, "total": total}
        types = {"id": db.Integer, "at": UTCDateTime, "total": db.Integer}
        return [cast(null(), types.get(key, db.String)).label(key) if column is None
                else column.label(key) for key, column in columns.items()]

    migrations = (db.select(*row(MIGRATION_KIND, MigrationTask.id, MigrationTask.status,
                                 Server.name, source.name, destination.name,
                                 total=func.count().over()))
                  .outerjoin(Server, Server.id == MigrationTask.server_id)
                  .outerjoin(source, source.id == MigrationTask.source_id)
                  .outerjoin(destination, destination.id == MigrationTask.destination_id)
                  .where(MigrationTask.status.in_(status.MIGRATION_ACTIVE))
                  .order_by(MigrationTask.id).limit(shown).subquery())
    recent = (db.select(*row(JOB_KIND, Job.id, Job.status, Job.name, at=Job.created_at))
              .order_by(Job.id.desc()).limit(jobs).subquery())
    beat = db.select(*row(BEAT_KIND, at=workers.newest_beat().scalar_subquery()))
    return union_all(db.select(migrations), db.select(recent), beat)


def short_lists() -> tuple[list[MigrationRow], int, list[JobRow], datetime | None]:
    """The running migrations the dashboard lists (MIGRATIONS_SHOWN at most) and how many run,
    the recent jobs, newest first, and when a worker was last seen: one query."""
    migrations, jobs, total, seen = [], [], 0, None
    for kind, row_id, state, name, source, destination, at, count in (
            db.session.connection().execute(short_lists_query())):
        if kind == MIGRATION_KIND:
            migrations.append(MigrationRow(row_id, state, name, source, destination))
            total = count
        elif kind == JOB_KIND:
            jobs.append(JobRow(row_id, name, state, at))
        else:
            seen = at
    # A UNION promises no order of its parts' rows: each list is put in its own order here.
    migrations.sort(key=lambda row: row.id)
    jobs.sort(key=lambda row: row.id, reverse=True)
    return migrations, total, jobs, seen

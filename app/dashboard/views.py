"""Dashboard view: a page of compute resources with their load, running migrations, jobs.

A fixed number of queries whatever the size of the fleet (tests/test_pages.py counts them).
"""
import math
from dataclasses import dataclass
from datetime import datetime

from flask import Blueprint, render_template, request
from sqlalchemy import case, func
from sqlalchemy.orm import load_only, selectinload

from app import status
from app.extensions import db
from app.models import ComputeResource, Job, MigrationTask, Server
from app.services import workers

bp = Blueprint("dashboard", __name__)


PAGE_SIZE = 50  # compute resources per page: a fleet of hundreds is read a page at a time
MIGRATIONS_SHOWN = 20  # running migrations listed; an evacuation's hundred are on its page


@dataclass(frozen=True)
class ResourceRow:
    """One line of the dashboard's table: a compute resource and its load, read in SQL."""

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

    @property
    def memory_used_percent(self):
        """How full the host's memory is, 0-100, or None when unknown."""
        total, free = self.memory_total_mib, self.memory_free_mib
        if not total or free is None:
            return None
        return round(100 * (total - free) / total)


def resource_rows(page: int = 1, page_size: int = PAGE_SIZE) -> list[ResourceRow]:
    """One page of compute resources with their running and total server counts, in one
    query whatever the number of servers: the counts are aggregated in SQL, and only the two
    facts the table shows are read out of the facts document (not the whole of it)."""
    counts = (db.select(Server.compute_resource_id.label("resource_id"),
                        func.sum(case((Server.state == status.SERVER_RUNNING, 1), else_=0))
                        .label("running"), func.count().label("total"))
              .where(Server.state != status.SERVER_MISSING)
              .group_by(Server.compute_resource_id).subquery())
    facts = ComputeResource.facts
    query = (db.select(ComputeResource.id, ComputeResource.name, ComputeResource.status,
                       ComputeResource.status_reason, ComputeResource.host, ComputeResource.port,
                       ComputeResource.last_synced_at,
                       func.coalesce(counts.c.running, 0), func.coalesce(counts.c.total, 0),
                       facts[("memory", "total_mib")].as_float(),
                       facts[("memory", "free_mib")].as_float(),
                       facts[("os", "pretty_name")].as_string())
             .outerjoin(counts, counts.c.resource_id == ComputeResource.id)
             .order_by(ComputeResource.name, ComputeResource.id)
             .limit(page_size).offset((page - 1) * page_size))
    return [ResourceRow(*row) for row in db.session.execute(query)]


def window(page: int, total: int, page_size: int = PAGE_SIZE) -> dict:
    """The pager's numbers for `total` items, page clamped to what exists.

    >>> window(3, 120, 50)
    {'page': 3, 'pages': 3, 'first': 101, 'last': 120, 'total': 120}
    >>> window(9, 0, 50)
    {'page': 1, 'pages': 1, 'first': 0, 'last': 0, 'total': 0}
    """
    pages = max(1, -(-total // page_size))
    page = max(1, min(page, pages))
    first = (page - 1) * page_size + 1 if total else 0
    return {"page": page, "pages": pages, "first": first,
            "last": min(page * page_size, total), "total": total}


@bp.route("/")
def index():
    """Compute resources with status and load, running migrations, recent jobs."""
    pager = window(request.args.get("page", 1, type=int),
                   db.session.scalar(db.select(func.count()).select_from(ComputeResource)))
    active = MigrationTask.status.in_(status.MIGRATION_ACTIVE)
    # The names the table shows, loaded with the tasks (not one query per task, and not the
    # compute resources' facts documents).
    migrations = db.session.scalars(
        db.select(MigrationTask).where(active).order_by(MigrationTask.id).limit(MIGRATIONS_SHOWN)
        .options(selectinload(MigrationTask.server).load_only(Server.id, Server.name),
                 selectinload(MigrationTask.source).load_only(ComputeResource.id,
                                                              ComputeResource.name),
                 selectinload(MigrationTask.destination).load_only(ComputeResource.id,
                                                                   ComputeResource.name))).all()
    migrations_total = (len(migrations) if len(migrations) < MIGRATIONS_SHOWN else
                        db.session.scalar(db.select(func.count()).where(active)))
    jobs = db.session.scalars(db.select(Job).order_by(Job.id.desc()).limit(8).options(
        load_only(Job.id, Job.name, Job.status, Job.created_at))).all()
    silence = workers.silent_for()
    context = {"rows": resource_rows(pager["page"]), "pager": pager, "migrations": migrations,
               "migrations_total": migrations_total, "jobs": jobs,
               "worker_silence": silence, "worker_never_seen": silence == math.inf}
    if request.headers.get("HX-Request") and request.args.get("fragment") == "resources":
        return render_template("dashboard/_resources.html", **context)
    if request.headers.get("HX-Request") and request.args.get("fragment") == "workers":
        return render_template("dashboard/_workers.html", **context)
    return render_template("dashboard/index.html", **context)

"""RQ entry points. Each receives a Job row id and runs under the job runner's wrapper.

Connections to compute resources (SSH, libvirt) are opened inside the job, in
the forked work horse, never inherited from the worker process.
"""
import functools

from app.services import jobs
from worker.runtime import get_app


def entry(func):
    """Wrap `func(job, **args)` as an RQ entry point taking only the Job row id."""
    @functools.wraps(func)
    def run_by_id(job_id):
        with get_app().app_context():
            return jobs.run(job_id, func)
    return run_by_id


@entry
def sync_resource(job, resource_id):
    """Gather facts and servers of one compute resource."""
    from app.services import inventory
    return inventory.sync(resource_id)


@entry
def sync_all(job):
    """Enqueue one sync job per compute resource (each commits before the next is queued)."""
    from app.services import inventory
    return {"jobs": [j.id for j in inventory.enqueue_sync_all()]}


@entry
def test_connection(job, resource_id):
    """Check SSH and libvirt to one compute resource with its pinned host key."""
    from app.services import resources
    return resources.test_connection(resource_id)


@entry
def run_group(job, group_id):
    """Run a migration group's tasks one by one (never retried: recovery settles a dead one)."""
    from app.services import migration
    return migration.run_group(group_id)


@entry
def approve_evacuation(job, evacuation_id):
    """Approve an evacuation a webhook source's "evacuate" policy asked for, as stored (warnings
    acknowledged by the policy); the group starts if it may. Queued by the webhook receiver:
    the preflight takes too long for the monitoring tool's request."""
    from app.services import evacuation
    evac = evacuation.approve(evacuation_id)
    return {"evacuation": evac.id, "status": evac.status, "group": evac.group_id,
            "error": evac.error}

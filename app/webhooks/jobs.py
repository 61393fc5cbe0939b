"""The webhook's job: approve an evacuation that a source's "evacuate" policy asked for.

Approval runs the preflight on the nodes, which takes seconds to minutes: too long
for a monitoring tool's request, so the receiver queues it here and answers at once.
"""
from worker.jobs import entry


@entry
def approve_evacuation(job, evacuation_id):
    """Approve the plan as stored (warnings acknowledged by the policy); the group starts if it may."""
    from app.services import evacuation
    evac = evacuation.approve(evacuation_id)
    return {"evacuation": evac.id, "status": evac.status, "group": evac.group_id,
            "error": evac.error}

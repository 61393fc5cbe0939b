"""The fault matrix's short subset (bench/fault_matrix.py): the boundaries that matter most.

Each case moves a real server with a real `python -m worker` that dies (FERRY_DIE_AT) or
pauses (FERRY_PAUSE_AT) at one journal boundary while the harness kills a libvirtd there;
a fresh worker's recovery pass settles what is left. Then, from libvirt on every node: the
server is defined on one node, in the state it had, with its disk content unchanged; nothing
the task's journal named is left; the task and its group ended with the truth; no claim is
held. `make faults` runs every boundary times every fault.
"""
import pytest

from bench.fault_matrix import SHORT, Rig

pytestmark = pytest.mark.lab


@pytest.fixture
def database_url(postgres_url):
    """The harness, the workers and recovery share one PostgreSQL database."""
    return postgres_url


@pytest.fixture
def rig(app, lab, fleet, worker_redis, tmp_path):
    """The matrix's harness on the test's database, Redis db and lab; put right afterwards."""
    harness = Rig(app, lab, fleet, str(tmp_path))
    yield harness
    harness.close()


@pytest.mark.parametrize("case", SHORT, ids=[c.key.replace(" ", "") for c in SHORT])
def test_it_keeps_the_server_whole_when_a_fault_hits_a_boundary(rig, case):
    record = rig.run(case)
    seen = {k: record.get(k) for k in ("violations", "notes", "injected", "status", "error",
                                       "where", "steps", "events", "settle_s")}
    assert record["reached"], (seen, rig.workers.logs())
    assert record["passed"], (seen, record.get("worker_log"))

"""Claims: slots of the concurrency limits, all or nothing, on SQLite and PostgreSQL alike."""
import threading
from datetime import timedelta

import pytest

from app.errors import FerryError
from app.extensions import db
from app.models import Claim, utcnow
from app.services import limits


@pytest.fixture
def database_url(db_url):
    """Every test here runs once on SQLite and once on PostgreSQL."""
    return db_url


def held():
    """Every claim as (kind, key, holder), sorted."""
    db.session.expire_all()
    return sorted((c.kind, c.key, c.holder) for c in db.session.scalars(db.select(Claim)))


def test_it_takes_nothing_when_the_second_node_is_busy(app_context):
    # The first node's claim must not survive the rollback (SQLite released its savepoint,
    # which committed it, and the task then waited for a row it held itself).
    db.session.add(Claim(kind=limits.RESOURCE, key="2", slot=0, holder="task:99"))
    db.session.commit()

    assert limits.claim_resources(1, [1, 2]) is False

    assert held() == [("resource", "2", "task:99")]


def test_it_takes_both_nodes_and_the_server_and_frees_them(app_context):
    assert limits.claim_resources(1, [1, 2], server_id=7) is True
    assert held() == [("resource", "1", "task:1"), ("resource", "2", "task:1"),
                      ("server", "7", "task:1")]
    limits.release_resources(1)
    assert held() == []


def test_it_refuses_a_server_claimed_by_another_task(app_context):
    app_context.config["TASKS_PER_RESOURCE"] = 2  # the nodes have room: only the server is busy
    assert limits.claim_resources(1, [1, 2], server_id=7) is True

    assert limits.claim_resources(2, [1, 3], server_id=7) is False

    assert ("resource", "3", "task:2") not in held()
    assert [h for h in held() if h[2] == "task:2"] == []
    assert limits.claim_resources(2, [1, 3], server_id=8) is True


def test_it_says_who_holds_the_busy_nodes(app_context):
    limits.claim_resources(5, [1, 2], server_id=7)
    assert limits.blockers(6, [2, 3], server_id=7) == {"resource:2": 5, "server:7": 5}


def test_it_gives_two_copies_from_one_source_different_ports(app_context):
    first = limits.claim_export_port(1, resource_id=4)
    second = limits.claim_export_port(2, resource_id=4)
    elsewhere = limits.claim_export_port(3, resource_id=5)

    assert (first, second, elsewhere) == (8081, 8082, 8081)
    assert limits.claim_export_port(1, resource_id=4) == 8081  # asked again: the same port
    limits.release_resources(1)
    assert limits.claim_export_port(4, resource_id=4) == 8081


def test_the_preflight_probes_the_port_the_next_copy_would_claim(app_context):
    limits.claim_export_port(1, resource_id=4)
    limits.claim_export_port(2, resource_id=4)
    port, holder = limits.claim_probe_port(4)
    assert port == 8083  # what a third copy would have got
    assert limits.claim_probe_port(5)[0] == 8081  # another source's ports are its own
    limits.release_probe_port(holder)
    assert limits.claim_export_port(3, resource_id=4) == 8083


def test_a_copy_that_starts_while_the_preflight_probes_takes_another_port(app_context):
    """The probe's listener holds its port for seconds: an offline copy from the same node
    that claimed that port meanwhile could not bind it and failed (tests/lab/
    test_many_workers.py saw it). The probe claims the port while it probes."""
    port, holder = limits.claim_probe_port(4)
    assert port == 8081 and holder.startswith("probe:")
    assert limits.claim_export_port(1, resource_id=4) == 8082
    limits.release_probe_port(holder)
    assert ("port", "4", holder) not in held()
    assert limits.claim_export_port(2, resource_id=4) == 8081


def test_a_probe_claim_its_preflight_never_gave_back_is_dropped_later(app_context):
    _port, holder = limits.claim_probe_port(4)
    claim = db.session.scalar(db.select(Claim).filter_by(holder=holder))
    claim.at = claim.at - limits.PROBE_HOLD - timedelta(seconds=1)  # its process died
    db.session.commit()
    fresh, other = limits.claim_probe_port(4)
    assert fresh == 8081 and other != holder
    assert [h for h in held() if h[2] == holder] == []


def test_a_probe_takes_nothing_when_every_port_is_taken(app_context):
    limits.claim_export_port(1, resource_id=4, count=1)
    assert limits.claim_probe_port(4, count=1) == (8081, None)
    limits.release_probe_port(None)
    assert held() == [("port", "4", "task:1")]


def test_it_refuses_a_port_when_the_range_is_used_up(app_context):
    limits.claim_export_port(1, resource_id=4, count=1)
    with pytest.raises(FerryError, match="no free export port"):
        limits.claim_export_port(2, resource_id=4, count=1)
    assert [h for h in held() if h[2] == "task:2"] == []


def test_it_never_leaves_half_a_claim_when_tasks_race(app):
    # Ten tasks race for overlapping pairs of three nodes from threads with connections of
    # their own: whatever wins, each task holds both its nodes or none.
    pairs = {task_id: [1 + task_id % 3, 1 + (task_id + 1) % 3] for task_id in range(1, 11)}
    start = threading.Barrier(len(pairs))

    def claim(task_id):
        with app.app_context():
            start.wait()
            limits.claim_resources(task_id, pairs[task_id])
            db.session.remove()

    threads = [threading.Thread(target=claim, args=(t,)) for t in pairs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with app.app_context():
        by_task = {}
        for kind, key, holder in held():
            by_task.setdefault(holder, []).append(int(key))
        assert by_task and all(sorted(keys) == sorted(pairs[int(h[5:])]) for h, keys in
                               by_task.items()), by_task
        assert len({k for keys in by_task.values() for k in keys}) == sum(
            len(keys) for keys in by_task.values())  # one slot each: no node twice



def ended_task(outcome_status=None, n=1):
    """A task (the n-th: nodes and server of its own) with its nodes, its server and an export
    port claimed, as a running job holds them; returns it."""
    from app import status
    from app.models import ComputeResource, MigrationGroup, MigrationTask, Server
    node1, node2 = (ComputeResource(name=f"{name}-{n}", host="h", key_path="/k")
                    for name in ("n1", "n2"))
    server = Server(uuid=f"00000000-0000-4000-8000-00000000c1a{n}", name=f"held-{n}",
                    compute_resource=node1)
    task = MigrationTask(source=node1, destination=node2, server=server, mode=status.MODE_OFFLINE,
                         status=outcome_status or status.MIGRATION_RUNNING)
    db.session.add(MigrationGroup(status=status.MIGRATION_RUNNING, options={}, tasks=[task]))
    db.session.commit()
    assert limits.claim_resources(task.id, [node1.id, node2.id], server_id=server.id)
    limits.claim_export_port(task.id, node1.id)
    return task


@pytest.mark.parametrize("ending", ["failed", "finished"])
def test_a_task_gives_back_its_claims_in_the_commit_that_records_its_outcome(app_context,
                                                                             ending):
    # Fault suite seed 10, #69: the task said finished while its nodes, server and port were
    # still claimed; the job freed them in a commit of its own after the outcome's, so a worker
    # killed between the two left both nodes blocked for every later move.
    from app import status
    from app.services import timeline
    task = ended_task()
    assert len(held()) == 4
    if ending == "failed":
        timeline.finish(task, status.MIGRATION_FAILED, "the link went away")
    else:
        timeline.finish_success(task, "moved", {})
    db.session.rollback()  # nothing uncommitted counts: only what the outcome's commit wrote
    assert held() == []


def test_recovery_frees_claims_an_ended_task_or_group_still_holds(app_context):
    # Claims a worker left behind before their release shared the outcome's commit (or any
    # other way): a recovery pass gives them back, and says so.
    from app import status
    from app.services import recovery
    task = ended_task(status.MIGRATION_FINISHED)
    db.session.add(Claim(kind=limits.GROUP, key="*", slot=0, holder=f"group:{task.group_id}"))
    task.group.status = status.MIGRATION_FINISHED
    db.session.add(Claim(kind=limits.RESOURCE, key="9", slot=0, holder="task:4242"))  # no row
    db.session.commit()
    live = ended_task(n=2)  # a running task, its job alive, keeps what it holds
    live.lease_owner, live.lease_until = "worker-1", utcnow() + timedelta(minutes=5)
    live.heartbeat_at = utcnow()
    db.session.commit()
    live_claims = [c for c in held() if c[2] == f"task:{live.id}"]

    done = recovery.reconcile()

    assert held() == sorted(live_claims + [("resource", "9", "task:4242")])
    assert (None, f"freed 4 claims of ended task {task.id}") in done
    assert (None, f"freed 1 claim of ended group {task.group_id}") in done

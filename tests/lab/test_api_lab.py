"""A script's whole path through /api/v1 against real nodes: sync, preflight, migrate, follow, metrics.

Everything after the lab is set up goes through HTTP with an operator's API
token, the jobs run in a real forked RQ worker, and the server really moves.
"""
import pytest

from app import status
from tests.fixtures.fleet import where, wait_until

pytestmark = pytest.mark.lab


@pytest.fixture
def operator(runner, bob):
    """Headers carrying an operator's API token, issued by `flask users token`."""
    result = runner.invoke(args=["users", "token", "bob"])
    return {"Authorization": "Bearer " + result.output.strip().splitlines()[-1]}


def test_it_lets_a_script_sync_preflight_migrate_and_read_the_outcome(
        app, client, lab, lab_server, fleet, operator, redis_conn, work):
    guest = lab_server("node1", "api-live", memory=128)
    lab.wait_for_guest(guest["ip"], 60)

    synced = client.post("/api/v1/sync", headers=operator)
    assert synced.status_code == 202 and len(synced.get_json()["jobs"]) == len(fleet)
    work()
    for job in synced.get_json()["jobs"]:
        assert client.get(f"/api/v1/jobs/{job['id']}", headers=operator).get_json()["status"] \
            == status.JOB_FINISHED

    [server] = client.get("/api/v1/servers?name=api-live", headers=operator).get_json()["items"]
    assert server["compute_resource"] == "node1" and server["state"] == status.SERVER_RUNNING
    request = {"server_ids": [server["id"]], "destination_id": fleet["node2"], "live": True,
               "acknowledge_warnings": True}

    preflight = client.post("/api/v1/preflight", json=request, headers=operator).get_json()
    assert preflight["summary"]["status"] != "fail", preflight["results"]

    created = client.post("/api/v1/migration-groups", json=request, headers=operator)
    assert created.status_code == 201, created.get_json()
    [task] = created.get_json()["tasks"]
    assert task["status"] == status.MIGRATION_PENDING and task["eta"]["preflight"]["seconds"] > 0
    work()  # the group's job: a real live migration, node1 -> node2

    done = client.get(f"/api/v1/tasks/{task['id']}", headers=operator).get_json()
    assert done["status"] == status.MIGRATION_FINISHED, done["error"]
    assert done["result"]["downtime_ms"] is not None and done["result"]["bytes"] > 0
    assert {"started", "finished"} <= {e["kind"] for e in done["events"]}
    assert where(lab, "api-live") == {"node2": "running"}
    wait_until(lambda: lab.ping(guest["ip"], count=1, timeout=1), 30, "a ping answer")
    report = client.get(f"/api/v1/migration-groups/{task['group_id']}/report",
                        headers=operator).get_json()
    assert report["status"] == status.MIGRATION_FINISHED

    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'ferry_migrations_total{mode="live",outcome="finished"} 1.0' in metrics
    assert 'ferry_migration_downtime_seconds_count{mode="live"} 1.0' in metrics

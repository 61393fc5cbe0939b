"""/metrics (Prometheus text, read from the database at scrape time) and /healthz.

On SQLite and PostgreSQL. One test lets a real forked RQ worker record a failed
sync and reads it from the web app's /metrics: the numbers live in the
database, so every process tells the same story.
"""
import logging

from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app import create_app, status
from app.extensions import db
from app.models import (ComputeResource, Evacuation, Job, MigrationGroup, MigrationTask, WebhookEvent,
                        utcnow)
from app.services import inventory
from tests.fixtures.app import TEST_REDIS_URL
from tests.fixtures.rack import rack  # noqa: F401 - a fixture


@pytest.fixture
def database_url(db_url):
    return db_url


def scrape(client):
    """{(sample name, frozenset(labels)): value} from GET /metrics."""
    answer = client.get("/metrics")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.headers["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(answer.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0)


def test_it_needs_no_login_and_has_every_family_on_an_empty_database(client):
    samples = scrape(client)
    names = {name for name, _ in samples}
    assert {"ferry_migration_tasks_running", "ferry_migration_tasks_waiting",
            "ferry_migration_groups_running", "ferry_sync_failures_total",
            "ferry_compute_resources"} <= names
    assert value(samples, "ferry_sync_failures_total", status="failed") == 0
    assert value(samples, "ferry_migration_tasks_running") == 0


@pytest.fixture
def history(app, rack):
    """Finished, failed, running and waiting tasks, as the engine leaves them."""
    nodes, servers = rack
    rows = [
        ("live", status.MIGRATION_FINISHED, {"total_ms": 42_000, "downtime_ms": 180}),
        ("live", status.MIGRATION_FINISHED, {"total_ms": 400_000, "downtime_ms": 1500}),
        ("offline", status.MIGRATION_FINISHED, {"total_ms": 90_000, "downtime_ms": 90_000}),
        ("offline", status.MIGRATION_FAILED, None),
        ("live", status.MIGRATION_CANCELLED, None),
        ("live", status.MIGRATION_RUNNING, None),
        ("live", status.MIGRATION_PENDING, None),
        ("live", status.MIGRATION_PREFLIGHT, None),
    ]
    with app.app_context():
        group = MigrationGroup(status=status.MIGRATION_RUNNING, options={})
        for mode, task_status, result in rows:
            group.tasks.append(MigrationTask(
                server_id=servers["web"], source_id=nodes["node1"],
                destination_id=nodes["node2"], mode=mode, status=task_status, result=result))
        db.session.add(group)
        db.session.commit()


def test_it_counts_migrations_by_mode_and_outcome(client, history):
    samples = scrape(client)

    assert value(samples, "ferry_migrations_total", mode="live", outcome="finished") == 2
    assert value(samples, "ferry_migrations_total", mode="offline", outcome="finished") == 1
    assert value(samples, "ferry_migrations_total", mode="offline", outcome="failed") == 1
    assert value(samples, "ferry_migrations_total", mode="live", outcome="cancelled") == 1
    assert value(samples, "ferry_migration_tasks_running") == 1
    assert value(samples, "ferry_migration_tasks_waiting") == 2  # pending and in preflight
    assert value(samples, "ferry_migration_groups_running") == 1


def test_it_has_duration_and_downtime_histograms_per_mode(client, history):
    samples = scrape(client)

    assert value(samples, "ferry_migration_duration_seconds_count", mode="live") == 2
    assert value(samples, "ferry_migration_duration_seconds_sum", mode="live") == 442
    assert value(samples, "ferry_migration_duration_seconds_bucket", mode="live", le="60.0") == 1
    assert value(samples, "ferry_migration_duration_seconds_bucket", mode="live", le="+Inf") == 2
    assert value(samples, "ferry_migration_downtime_seconds_bucket", mode="live", le="0.25") == 1
    assert value(samples, "ferry_migration_downtime_seconds_bucket", mode="live", le="2.0") == 2
    assert value(samples, "ferry_migration_downtime_seconds_count", mode="offline") == 1


def test_it_counts_evacuations_webhook_events_and_resource_states(app, client, rack):
    nodes, _ = rack
    with app.app_context():
        db.session.add_all([
            Evacuation(compute_resource_id=nodes["node1"], status=status.EVACUATION_RUNNING,
                       plan={}),
            Evacuation(compute_resource_id=nodes["node2"], status=status.EVACUATION_PLANNED,
                       plan={}),
            WebhookEvent(action=status.WEBHOOK_PLANNED), WebhookEvent(action=status.WEBHOOK_DUPLICATE),
            WebhookEvent(action=status.WEBHOOK_DUPLICATE)])
        db.session.commit()

    samples = scrape(client)

    assert value(samples, "ferry_evacuations", kind="evacuate", status="running") == 1
    assert value(samples, "ferry_evacuations", kind="evacuate", status="planned") == 1
    assert value(samples, "ferry_webhook_events_total", action="duplicate") == 2
    assert value(samples, "ferry_compute_resources", status="active") == 3


def test_it_shows_a_sync_that_failed_in_the_worker_in_the_web_apps_metrics(
        app, client, rack, redis_conn, work):
    nodes, _ = rack
    with app.app_context():
        inventory.enqueue_sync(db.session.get(ComputeResource, nodes["node1"]))
        db.session.add(Job(name="sync_resource", status=status.JOB_ERRORED))
        db.session.add(Job(name="test_connection", status=status.JOB_FAILED))  # not a sync
        db.session.commit()

    work()  # a forked RQ worker: node1 answers on no port, so its sync fails

    samples = scrape(client)
    assert value(samples, "ferry_sync_failures_total", status="failed") == 1
    assert value(samples, "ferry_sync_failures_total", status="errored") == 1


# --- health -------------------------------------------------------------------------------


def test_it_is_healthy_when_the_database_and_redis_answer(client, redis_conn):
    answer = client.get("/healthz")
    assert answer.status_code == 200
    assert answer.get_json() == {"status": "ok", "database": {"ok": True}, "redis": {"ok": True}}


def _app_with(tmp_path, **config):
    return create_app({"TESTING": True, "SECRET_KEY": "test",
                       "INSTANCE_PATH": str(tmp_path / "other"),
                       "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'other.sqlite'}",
                       "REDIS_URL": TEST_REDIS_URL, **config})


def test_it_is_unhealthy_with_503_and_says_what_failed(tmp_path, redis_conn):
    # Port 1 on loopback: nothing listens there, so both fail at once and fast.
    broken = _app_with(tmp_path, REDIS_URL="redis://127.0.0.1:1/0",
                       SQLALCHEMY_DATABASE_URI="postgresql+psycopg://postgres@127.0.0.1:1/none")

    answer = broken.test_client().get("/healthz")

    assert answer.status_code == 503
    assert answer.get_json() == {"status": "failing", "failing": ["database", "redis"],
                                 "database": {"ok": False}, "redis": {"ok": False}}


def test_it_names_a_failing_redis_without_its_exception_and_logs_the_exception(
        tmp_path, caplog):
    # Port 1 on loopback refuses at once; the URL carries a password: nothing of it may leak.
    broken = _app_with(tmp_path, REDIS_URL="redis://:hunter2@127.0.0.1:1/0")

    with caplog.at_level(logging.WARNING, logger="ferry.observability"):
        answer = broken.test_client().get("/healthz")

    text = answer.get_data(as_text=True)
    assert answer.status_code == 503 and "redis" in answer.get_json()["failing"]
    assert answer.get_json()["database"] == {"ok": True}
    for leak in ("Error", "refused", "127.0.0.1", "hunter2", "111", "Traceback"):
        assert leak not in text
    assert "redis is failing: ConnectionError" in caplog.text


def test_it_answers_a_scrape_with_503_when_the_database_is_down(tmp_path):
    broken = _app_with(tmp_path,
                       SQLALCHEMY_DATABASE_URI="postgresql+psycopg://postgres@127.0.0.1:1/none")
    answer = broken.test_client().get("/metrics")
    assert answer.status_code == 503 and "database unreachable" in answer.get_data(as_text=True)


# --- what the alert rules need ------------------------------------------------------------


def test_it_gives_each_running_task_its_age_and_deadline(app, client, rack):
    nodes, servers = rack
    with app.app_context():
        group = MigrationGroup(status=status.MIGRATION_RUNNING, options={})
        group.tasks.append(MigrationTask(
            server_id=servers["web"], source_id=nodes["node1"], destination_id=nodes["node2"],
            mode="live", status=status.MIGRATION_RUNNING, progress={"data_total": 3 * 1024 ** 3},
            started_at=utcnow() - timedelta(seconds=600)))
        db.session.add(group)
        db.session.commit()
        labels = {"task": str(group.tasks[0].id), "group": str(group.id), "mode": "live"}

    samples = scrape(client)

    # 150 s per GiB (COMPLETION_TIMEOUT_PER_GIB) of the 3 GiB libvirt reported
    assert value(samples, "ferry_migration_task_deadline_seconds", **labels) == 450
    assert 600 <= value(samples, "ferry_migration_task_age_seconds", **labels) < 700


def test_it_counts_refused_webhook_deliveries_by_status(client, redis_conn):
    assert client.post("/hooks/nobody").status_code == 401
    assert client.post("/hooks/nobody", headers={"Authorization": "Bearer x"}).status_code == 403

    samples = scrape(client)

    assert value(samples, "ferry_webhook_deliveries_refused_total", code="401") == 1
    assert value(samples, "ferry_webhook_deliveries_refused_total", code="403") == 1
    assert ("ferry_webhook_deliveries_refused_total", frozenset({"code": "400"}.items())) in samples

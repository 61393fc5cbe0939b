"""The job runner: row first, RQ carries the id, every outcome recorded on the row."""
import json
import zlib

from app import status
from app.extensions import db
from app.models import Job
from app.services import jobs

TEST_JOBS = "tests.jobs_for_tests"


def test_it_commits_the_row_before_enqueueing_only_its_id(app_context, redis_conn):
    job = jobs.enqueue("succeed", {"value": 7}, module=TEST_JOBS)
    queue = jobs.get_queue(connection=redis_conn)
    [rq_job] = queue.get_jobs()
    assert rq_job.args == [job.id]
    assert rq_job.func_name == "tests.jobs_for_tests.succeed"
    # The payload in Redis is (zlib-compressed) JSON, not pickle.
    raw = zlib.decompress(redis_conn.hget(f"rq:job:{rq_job.id}", "data"))
    assert json.loads(raw)[2] == [job.id]
    assert db.session.get(Job, job.id).status == status.JOB_PENDING


def test_it_runs_a_job_to_finished_with_its_log(app_context, redis_conn, work):
    job = jobs.enqueue("succeed", {"value": 7}, module=TEST_JOBS)
    work()
    db.session.expire_all()
    job = db.session.get(Job, job.id)
    assert job.status == status.JOB_FINISHED
    assert job.result == {"value": 7}
    assert "working on 7" in job.log
    assert job.started_at and job.finished_at >= job.started_at


def test_it_ends_a_raising_job_errored_with_its_traceback(app_context, redis_conn, work):
    job = jobs.enqueue("explode", {"message": "boom"}, module=TEST_JOBS)
    work()
    db.session.expire_all()
    job = db.session.get(Job, job.id)
    assert job.status == status.JOB_ERRORED
    assert job.error == "ZeroDivisionError: boom"
    assert "Traceback (most recent call last)" in job.traceback
    assert "jobs_for_tests.py" in job.traceback
    assert "about to explode" in job.log


def test_it_ends_a_known_failure_failed_with_its_message(app_context, redis_conn, work):
    job = jobs.enqueue("refuse", {"reason": "node2 has no IP block public"}, module=TEST_JOBS)
    work()
    db.session.expire_all()
    job = db.session.get(Job, job.id)
    assert job.status == status.JOB_FAILED
    assert job.error == "node2 has no IP block public"
    assert job.traceback is None


def test_it_serves_the_job_fragment_and_stops_polling_when_done(app, client, alice, login,
                                                                redis_conn, work):
    with app.app_context():
        job_id = jobs.enqueue("succeed", {"value": 1}, module=TEST_JOBS).id
    login(client, "alice")
    fragment = client.get(f"/jobs/{job_id}", headers={"HX-Request": "true"})
    assert fragment.status_code == 200
    assert 'hx-trigger="every 1s"' in fragment.get_data(as_text=True)
    work()
    fragment = client.get(f"/jobs/{job_id}", headers={"HX-Request": "true"})
    assert fragment.status_code == 286
    assert "every 1s" not in fragment.get_data(as_text=True)
    page = client.get(f"/jobs/{job_id}")
    assert page.status_code == 200 and "<html" in page.get_data(as_text=True)

"""Worker heartbeats: a real `python -m worker` writes its row, /metrics shows it, and the
dashboard warns when no worker has been seen for a minute. SQLite and PostgreSQL."""
import os
import socket
import subprocess
import sys
from datetime import timedelta

import pytest

from app.extensions import db
from app.models import WorkerHeartbeat, utcnow
from app.services import workers
from tests.fixtures.app import TEST_REDIS_URL
from tests.unit.test_metrics import scrape, value

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BANNER = "No worker is running: nothing you start will move."


@pytest.fixture
def database_url(db_url):
    return db_url


def test_it_shows_a_real_worker_in_metrics(app, client, redis_conn, database_url, tmp_path):
    env = dict(os.environ, FERRY_DATABASE_URL=database_url, FERRY_REDIS_URL=TEST_REDIS_URL,
               FERRY_INSTANCE_PATH=str(tmp_path / "worker-instance"), FERRY_SECRET_KEY="test-" + "k" * 40)
    done = subprocess.run([sys.executable, "-m", "worker", "--burst", "--no-schedule"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with app.app_context():
        row = db.session.scalar(db.select(WorkerHeartbeat))
        assert row.hostname == socket.gethostname() and row.pid > 0

    samples = scrape(client)

    seen = value(samples, "ferry_worker_last_seen_seconds", worker=row.name,
                 hostname=row.hostname)
    assert (("ferry_worker_last_seen_seconds",
             frozenset({"worker": row.name, "hostname": row.hostname}.items())) in samples)
    assert 0 <= seen < workers.SILENT_AFTER_S


def test_it_updates_one_row_per_worker_and_forgets_long_gone_ones(app_context):
    now = utcnow()
    workers.beat("old-host", "gone", now=now - timedelta(days=2))
    workers.beat("host", "w1", pid=7, now=now - timedelta(seconds=30))
    workers.beat("host", "w1", pid=7, now=now)

    assert [(h, n) for h, n, _ in workers.last_seen(now)] == [("host", "w1")]
    assert workers.last_seen(now)[0][2] == 0


@pytest.fixture
def dashboard(client, login, alice):
    """alice's dashboard, as HTML."""
    login(client, "alice")
    return lambda: client.get("/").get_data(as_text=True)


def test_it_warns_on_the_dashboard_when_no_worker_was_ever_seen(dashboard):
    page = dashboard()
    assert BANNER in page and "No worker has ever been seen" in page


def test_it_warns_on_the_dashboard_when_the_newest_heartbeat_is_old(app, dashboard):
    with app.app_context():
        workers.beat("host", "w1", now=utcnow() - timedelta(seconds=workers.SILENT_AFTER_S + 30))
        workers.beat("host", "w2", now=utcnow() - timedelta(minutes=10))

    page = dashboard()

    assert BANNER in page and "The last worker was seen 9" in page  # 90 s, give or take


def test_it_shows_no_banner_while_a_worker_is_fresh(app, client, dashboard):
    with app.app_context():
        workers.beat("host", "stale", now=utcnow() - timedelta(minutes=10))
        workers.beat("host", "fresh")

    assert BANNER not in dashboard()
    fragment = client.get("/?fragment=workers", headers={"HX-Request": "true"})
    assert fragment.status_code == 200 and BANNER not in fragment.get_data(as_text=True)


def test_it_polls_the_banner_as_a_fragment(client, dashboard):
    dashboard()  # signs in
    fragment = client.get("/?fragment=workers", headers={"HX-Request": "true"})
    assert BANNER in fragment.get_data(as_text=True)
    assert "<html" not in fragment.get_data(as_text=True)


PRELOAD = """
import os, sys, threading
from app.infra import host
from worker import runtime
fds = set(os.listdir("/proc/self/fd"))
names = runtime.preload_job_modules()
missing = [n for n in names if n not in sys.modules]
print("missing", missing)
print("threads", threading.active_count())
print("loop", host._loop_pid)
print("new fds", sorted(set(os.listdir("/proc/self/fd")) - fds))
"""


def test_the_worker_preloads_what_a_job_imports_and_opens_nothing_doing_it():
    # The horses inherit the imports; a thread, a libvirt event loop or a socket made by an
    # import would be inherited too, and those must never cross a fork (app.infra.host).
    proc = subprocess.run([sys.executable, "-c", PRELOAD], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, FERRY_SECRET_KEY="x" * 40))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["missing []", "threads 1", "loop None", "new fds []"]
    before = subprocess.run([sys.executable, "-c", "import sys, worker.__main__; print("
                             "'app.services.live' in sys.modules)"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert before.stdout.strip() == "False"  # without the preload a horse would import it


FROZEN = """
import gc, os, sys
from worker import runtime
runtime.preload_job_modules()
frozen = runtime.freeze_for_horses()
read, write = os.pipe()
pid = os.fork()
if pid == 0:  # a horse: what its collector would walk on a full collection
    os.write(write, str(len(gc.get_objects())).encode())
    os._exit(0)
os.waitpid(pid, 0)
print(frozen, int(os.read(read, 100)))
"""


def test_the_worker_freezes_what_its_horses_inherit():
    proc = subprocess.run([sys.executable, "-c", FROZEN], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, FERRY_SECRET_KEY="x" * 40))
    assert proc.returncode == 0, proc.stderr
    frozen, walked = map(int, proc.stdout.split())
    assert frozen > 50_000  # the app, the engine, Fabric, paramiko, cryptography
    assert walked < frozen // 100

"""The container, verified: the Containerfile builds with podman from Debian's packages (a base
made by mmdebstrap: no registry is reachable), runs against the test PostgreSQL database and
Redis db, reports healthy through its own HEALTHCHECK, writes only JSON log lines when asked
to, shows its worker alive, and lets an admin sign in.

Then, from inside the container, it registers the nodes of the session's lab (their host keys
pinned to the fingerprints the lab reports), syncs them and sees them on the dashboard: the
container reaches real nodes over SSH and libvirt like an installed Ferry does.

`make container` runs this module alone. Without podman it skips on a developer's machine and
fails under CI=true.
"""
import http.cookiejar
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

import pytest

from tests.fixtures.app import TEST_REDIS_URL, _postgres_url, _reset_postgres, free_port

pytestmark = pytest.mark.container

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = os.path.join(ROOT, "contrib", "container")
IMAGE = os.environ.get("FERRY_IMAGE", "localhost/ferry:dev")
HEALTHY_WITHIN_S = 240  # migrations, gunicorn and the worker start in the container (vfs is slow)
BANNER = "No worker is running"
PASSWORD = "correct horse battery staple"


def podman(*args, check=True, timeout=120):
    """contrib/container/podman ARGS (podman with this machine's settings)."""
    done = subprocess.run([os.path.join(TOOLS, "podman"), *args], capture_output=True, text=True,
                          timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def image():
    """The image, built now by contrib/container/build (the layers podman caches make reruns fast)."""
    if shutil.which("podman") is None or shutil.which("mmdebstrap") is None:
        message = "podman or mmdebstrap is missing: `make deps` installs them"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    done = subprocess.run([os.path.join(TOOLS, "build")], capture_output=True, text=True,
                          timeout=3600)
    assert done.returncode == 0, f"the container did not build:\n{done.stdout}\n{done.stderr}"
    return IMAGE


CONTAINER_UID = 10001  # the Containerfile's ferry user


@pytest.fixture
def lab_key(lab):
    """A copy of the lab's SSH key that the container's user may read (the lab's own stays
    root's), in a folder of its own to mount; removed afterwards."""
    folder = tempfile.mkdtemp(prefix="ferry-container-key-")
    path = os.path.join(folder, "lab")
    shutil.copyfile(lab.status["ssh_key"], path)
    for item, mode in ((folder, 0o700), (path, 0o600)):
        os.chmod(item, mode)
        os.chown(item, CONTAINER_UID, CONTAINER_UID)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def container(image, redis_conn, lab_key):
    """Ferry running in a container on the test database and Redis db, the lab's key mounted;
    yields (name, base URL)."""
    database = _postgres_url()
    _reset_postgres(database)
    name, port = f"ferry-test-{secrets.token_hex(4)}", free_port()
    volumes = ["--volume", f"{lab_key}:/keys:ro"]
    podman("run", "--detach", "--name", name, "--network=host", *volumes,
           "--env", f"FERRY_DATABASE_URL={database}", "--env", f"FERRY_REDIS_URL={TEST_REDIS_URL}",
           "--env", f"FERRY_SECRET_KEY={secrets.token_urlsafe(48)}", "--env", f"FERRY_PORT={port}",
           "--env", "FERRY_WEB_WORKERS=1", "--env", "FERRY_LOG_FORMAT=json", image)
    try:
        yield name, f"http://127.0.0.1:{port}"
    finally:
        podman("rm", "--force", "--volumes", name, check=False)


def wait_until_healthy(name):
    """Run the image's own HEALTHCHECK until it passes (no systemd here runs it on a timer)."""
    deadline = time.monotonic() + HEALTHY_WITHIN_S
    while time.monotonic() < deadline:
        state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        if state != "running":
            pytest.fail(f"the container is {state}:\n{podman('logs', name, check=False).stderr}")
        if podman("healthcheck", "run", name, check=False).returncode == 0:
            return
        time.sleep(2)
    pytest.fail(f"not healthy within {HEALTHY_WITHIN_S} s:\n{podman('logs', name, check=False).stderr}")


def sign_in(base, username):
    """Sign in through the login form; returns an opener that keeps the session cookie."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    page = opener.open(f"{base}/login", timeout=10).read().decode()
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode({"username": username, "password": PASSWORD,
                                   "csrf_token": token}).encode()
    answer = opener.open(f"{base}/login", data=form, timeout=10)
    assert answer.url.rstrip("/") == base, f"login did not go to the dashboard: {answer.url}"
    return opener


def test_it_builds_runs_healthy_signs_in_and_reaches_the_labs_nodes(container, lab):
    name, base = container

    wait_until_healthy(name)
    assert podman("exec", name, "id", "-u").stdout.strip() == "10001"  # not root
    podman("exec", name, "flask", "--app", "wsgi", "users", "create-admin",
           "--username", "alice", "--password", PASSWORD)
    opener = sign_in(base, "alice")

    dashboard = opener.open(f"{base}/", timeout=10).read().decode()
    assert "Compute resources" in dashboard
    assert BANNER not in dashboard  # the container's own worker writes its heartbeat
    metrics = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    assert "ferry_worker_last_seen_seconds{" in metrics

    nodes = [node for node in lab.status["nodes"] if node.get("kind", "namespace") == "namespace"]
    _register_and_sync(name, nodes)
    listed = podman("exec", name, "flask", "--app", "wsgi", "resources", "list").stdout
    for node in nodes:
        line = next((row for row in listed.splitlines() if row.startswith(node["name"] + "\t")), "")
        assert "\tactive\t" in line and node["host_key_fingerprint"] in line, listed
    dashboard = opener.open(f"{base}/", timeout=10).read().decode()
    assert all(node["name"] in dashboard for node in nodes), dashboard[:2000]

    logs = podman("logs", name)
    lines = [line for line in (logs.stdout + logs.stderr).splitlines() if line.strip()]
    assert lines and all(line.startswith("{") and json.loads(line) for line in lines), lines[:20]


def _register_and_sync(name, nodes):
    """Add the nodes as compute resources from inside the container (host keys checked against
    the lab's fingerprints), then sync them all (in the container, as an operator would)."""
    for node in nodes:
        argv = ["exec", name, "flask", "--app", "wsgi", "resources", "add", node["name"],
                "--host", node["address"], "--port", str(node["port"]), "--user", node["user"],
                "--key", "/keys/lab", "--fingerprint", node["host_key_fingerprint"]]
        podman(*argv)
    podman("exec", name, "flask", "--app", "wsgi", "sync", timeout=600)

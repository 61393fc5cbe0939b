"""The container, verified: the Containerfile builds with podman from Debian's packages (a base
made by mmdebstrap: no registry is reachable), runs against the test PostgreSQL database and
Redis db, reports healthy through its own HEALTHCHECK, writes only JSON log lines when asked
to, shows its worker alive, and lets an admin sign in.

`make container` runs this module alone. Without podman it skips on a developer's machine and
fails under CI=true. With FERRY_TEST_CONTAINER_LAB (a `ferry-lab status --json` file) it also
registers the lab's nodes from inside the container, syncs them and sees them on the dashboard.
"""
import http.cookiejar
import json
import os
import re
import secrets
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from tests.fixtures.app import TEST_REDIS_URL, _postgres_url, _reset_postgres, free_port

pytestmark = pytest.mark.container

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


@pytest.fixture
def container(image, redis_conn):
    """Ferry running in a container on the test database and Redis db; yields (name, base URL)."""
    database = _postgres_url()
    _reset_postgres(database)
    name, port = f"ferry-test-{secrets.token_hex(4)}", free_port()
    lab = _lab_status()
    volumes = ["--volume", f"{lab['ssh_key']}:/keys/lab:ro"] if lab else []
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


def test_it_builds_runs_healthy_and_lets_an_admin_sign_in(container):
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
    logs = podman("logs", name)
    lines = [line for line in (logs.stdout + logs.stderr).splitlines() if line.strip()]
    assert lines and all(line.startswith("{") and json.loads(line) for line in lines), lines[:20]

    lab = _lab_status()
    if lab:  # a separate step: only with a lab to reach (FERRY_TEST_CONTAINER_LAB)
        _register_and_sync_the_lab(name, lab)
        dashboard = opener.open(f"{base}/", timeout=10).read().decode()
        assert all(node["name"] in dashboard for node in lab["nodes"])


def _lab_status():
    """The lab's status document when FERRY_TEST_CONTAINER_LAB names one, else None."""
    path = os.environ.get("FERRY_TEST_CONTAINER_LAB")
    if not path:
        return None
    with open(path) as f:
        return json.load(f)


def _register_and_sync_the_lab(name, lab):
    """Add every lab node as a compute resource from inside the container, then sync them all."""
    for node in lab["nodes"]:
        argv = ["exec", name, "flask", "--app", "wsgi", "resources", "add", node["name"],
                "--host", node["address"], "--port", str(node["port"]), "--user", node["user"],
                "--key", "/keys/lab"]
        if node.get("host_key_fingerprint"):
            argv += ["--fingerprint", node["host_key_fingerprint"]]
        podman(*argv)
    podman("exec", name, "flask", "--app", "wsgi", "sync", timeout=600)

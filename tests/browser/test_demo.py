"""`make demo`, then a real browser: sign in and see the 3 compute resources and their servers.

Runs lab/demo.py against the test lab on a free port (app and worker as
subprocesses it ends by PID), and drives Debian's chromium with Playwright.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from playwright.sync_api import expect, sync_playwright

from app.services import certificates

pytestmark = [pytest.mark.lab, pytest.mark.browser]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCREENSHOTS = os.path.join(ROOT, "tests", "browser", "screenshots")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
STATES = {"running": "running", "shut off": "stopped", "paused": "paused"}


def free_port():
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def demo(lab, tmp_path, app, nodes):
    """The demo on the test lab: yields its URL; stopped with SIGINT (then SIGKILL) by PID.

    The demo gets the test session's CA (`nodes` issued its certificates to the lab): a CA
    of its own would re-issue the nodes' certificates and leave the session's other lab
    tests moving in clear.
    """
    from lab.demo import DEMO_SERVERS
    before = {s["name"] for s in lab.servers()}
    port = free_port()
    log_path = tmp_path / "demo.log"
    instance = tmp_path / "demo-instance"  # the app fixture's own is tmp_path / "instance"
    os.makedirs(instance)
    for name in (certificates.CA_KEY_FILE, certificates.CA_CERT_FILE):
        shutil.copy2(os.path.join(app.instance_path, name), instance / name)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lab.demo", "--lab-name", lab.env["FERRY_LAB_NAME"],
             "--lab-net", lab.env["FERRY_LAB_NET"], "--port", str(port),
             "--instance", str(instance), "--redis-url", "redis://127.0.0.1:6379/13"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 600
        while "READY " not in log_path.read_text():
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"the demo did not start:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # The lab as the test found it: the demo's running guests would otherwise share the
        # two cores with every later lab test (a dirtying guest then missed its ping window).
        for _, name, _, _ in DEMO_SERVERS:
            if name not in before:
                lab.rmserver(name)


def test_it_signs_in_and_shows_every_compute_resource_and_server(demo, lab, tmp_path):
    os.makedirs(SCREENSHOTS, exist_ok=True)
    said = (tmp_path / "demo.log").read_text()
    for node in ("node1", "node2", "node3"):  # the demo runs with transfer TLS on
        assert f"{node}: TLS on, certificate" in said, said
    # Only the demo's own servers: other tests may be moving theirs around this lab right now.
    from lab.demo import DEMO_SERVERS
    demo_names = {name for _, name, _, _ in DEMO_SERVERS}
    expected = {s["name"]: (s["node"], STATES[s["state"]]) for s in lab.servers()
                if s["name"] in demo_names}
    assert set(expected) == demo_names
    assert expected == {name: (node, "stopped" if stopped else "running")
                        for node, name, _, stopped in DEMO_SERVERS}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(demo + "/servers/")
        expect(page).to_have_url(f"{demo}/login?next=/servers/")
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", "ferry-demo")
        page.click("button[type=submit]")
        expect(page).to_have_url(demo + "/servers/")
        page.goto(demo + "/")
        for node in ("node1", "node2", "node3"):
            row = page.locator(f"tr[data-resource='{node}']")
            expect(row).to_contain_text("active")
        page.screenshot(path=os.path.join(SCREENSHOTS, "dashboard.png"), full_page=True)

        page.goto(demo + "/servers/")
        for name, (node, state) in expected.items():
            row = page.locator("tr[data-server]").filter(has=page.get_by_text(name, exact=True))
            expect(row).to_have_attribute("data-state", state)
            expect(row).to_contain_text(node)
        page.screenshot(path=os.path.join(SCREENSHOTS, "servers.png"), full_page=True)

        # The filter swaps the table through htmx and keeps the URL bookmarkable.
        page.select_option("select[name=state]", "stopped")
        expect(page).to_have_url(f"{demo}/servers/?q=&state=stopped&resource=")
        expect(page.locator("tr[data-server][data-state='running']")).to_have_count(0)
        expect(page.locator("tr[data-server='mail-1']")).to_have_attribute("data-state", "stopped")

        page.goto(demo + "/")
        page.click("tr[data-resource='node1'] a")
        expect(page.locator("h1")).to_contain_text("node1")
        expect(page.locator(".fingerprint")).to_have_text(lab.node("node1")["host_key_fingerprint"])
        expect(page.locator("#transfer-tls")).to_contain_text("certificate valid")
        page.click("text=Sync now")
        expect(page.locator("#job-area .badge")).to_have_text("finished", timeout=30000)
        page.screenshot(path=os.path.join(SCREENSHOTS, "compute-resource.png"), full_page=True)
        browser.close()

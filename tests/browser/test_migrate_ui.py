"""A real browser against the real lab: migrate two servers live from the dialog, evacuate a node
through its plan and bring the servers back, cancel a migration from its page.

gunicorn and an RQ worker run as subprocesses on the test PostgreSQL
database and a Redis db of their own (ended by PID); Debian's chromium is
driven by Playwright. Two small guests are made once for the module and
removed at the end, wherever they are; every test finds them where the last
one left them.

The worker is started only once a group has been started from the page: the
queued group waits, as it would behind a busy worker, so that the test can
slow the destination's link (after the preflight measured the real one) and
watch the progress bar move instead of racing a three-second migration.
"""
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from playwright.sync_api import expect, sync_playwright
from redis import Redis

from app.extensions import db
from app.models import User
from tests.browser.test_demo import CHROMIUM_ARGS, SCREENSHOTS, free_port
from tests.fixtures.fleet import Workers, sync, wait_until, where
from tests.fixtures.lab import ROOT

pytestmark = [pytest.mark.lab, pytest.mark.browser]

REDIS_URL = "redis://127.0.0.1:6379/11"  # not db 14: other suites flush that one
PASSWORD = "ferry-browser-test"
GUESTS = (("node1", "ui-a"), ("node2", "ui-b"))
NODES = ("node1", "node2", "node3")
SLOW = 180_000  # ms: a preflight or a migration on a 2-core machine shared with other labs


@pytest.fixture
def database_url(postgres_url):
    """The web app, the worker and the test share one PostgreSQL database."""
    return postgres_url


@pytest.fixture(scope="module")
def guests(lab):
    """ui-a on node1 and ui-b on node2, 128 MiB, running; removed after the module."""
    present = {s["name"] for s in lab.servers()}
    made = {}
    for node, name in GUESTS:
        if name in present:  # left by an interrupted run
            lab.rmserver(name)
        made[name] = lab.mkserver(node, name, memory=128)
    for guest in made.values():
        lab.wait_for_guest(guest["ip"], 120)
    yield made
    for name in made:
        lab.rmserver(name)


class Site:
    """The running app: its URL, the worker pool, the in-process app and the node ids."""

    def __init__(self, url, workers, app, fleet):
        self.url, self.workers, self.app, self.fleet = url, workers, app, fleet

    def start_worker(self):
        """One worker, started once (later calls are no-ops)."""
        if not self.workers.procs:
            self.workers.start(1)

    def sync(self):
        """Sync every node so the inventory matches the lab."""
        sync(self.app, self.fleet)


@pytest.fixture
def site(app, fleet, guests, tmp_path):
    """gunicorn serving Ferry on the lab's synced inventory with an admin; a worker on demand."""
    app.config["REDIS_URL"] = REDIS_URL
    redis = Redis.from_url(REDIS_URL)
    redis.flushdb()
    sync(app, fleet)
    with app.app_context():
        admin = User(username="admin", role="admin")
        admin.set_password(PASSWORD)
        db.session.add(admin)
        db.session.commit()
    workers = Workers(app.config["SQLALCHEMY_DATABASE_URI"], REDIS_URL, app.instance_path)
    port = free_port()
    with open(tmp_path / "web.log", "w") as log:
        web = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "3",
             "--timeout", "300", "wsgi:app"],
            cwd=ROOT, env=workers.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url + "/login") or web.poll() is not None, 60, "gunicorn")
        assert web.poll() is None, (tmp_path / "web.log").read_text()
        yield Site(url, workers, app, fleet)
    finally:
        web.send_signal(signal.SIGTERM)
        try:
            web.wait(30)
        except subprocess.TimeoutExpired:
            web.kill()
            web.wait()
        workers.stop()
        redis.flushdb()
        redis.close()


def _answers(url):
    try:
        urllib.request.urlopen(url, timeout=2)
        return True
    except OSError:
        return False


@pytest.fixture
def page(site):
    """A signed-in chromium page."""
    os.makedirs(SCREENSHOTS, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 950})
        context.set_default_timeout(60_000)
        tab = context.new_page()
        tab.goto(site.url + "/login")
        tab.fill("input[name=username]", "admin")
        tab.fill("input[name=password]", PASSWORD)
        tab.click("button[type=submit]")
        expect(tab.locator("h1")).to_contain_text("Compute resources")
        yield tab
        browser.close()


def home_of(lab, name):
    """The node a guest runs on (exactly one)."""
    found = where(lab, name)
    assert len(found) == 1, found
    return next(iter(found))


def open_dialog(page, site, names, destination):
    """Select servers in the list, open Migrate, pick the destination and run Check."""
    page.goto(site.url + "/servers/")
    for name in names:
        page.check(f"tr[data-server='{name}'] input[name=server]")
    page.click("#migrate-button")
    dialog = page.locator("#migrate-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator("input[name=live]")).to_be_checked()
    expect(dialog.locator("input[name=preserve_ip]")).to_be_checked()
    dialog.locator("select[name=destination]").select_option(str(site.fleet[destination]))
    dialog.locator("#check-button").click()
    preflight = dialog.locator(".preflight, .preflight-error")
    expect(preflight).to_be_visible(timeout=SLOW)
    assert preflight.get_attribute("data-status") in ("pass", "warn"), preflight.inner_text()
    return dialog


def start_from_dialog(page, dialog):
    """Acknowledge warnings if there are any, click Start migration, land on the group page."""
    acknowledge = dialog.locator("input[name=acknowledge]")
    if acknowledge.count():
        acknowledge.check()
    dialog.locator("#start-button").click()
    expect(page).to_have_url(re.compile(r"/migrations/groups/\d+$"), timeout=SLOW)
    expect(page.locator(".group-live")).to_have_attribute("data-status", "running")


def test_it_migrates_two_running_servers_on_two_nodes_live_to_a_third(site, page, lab,
                                                                      shaped_link):
    homes = {name: home_of(lab, name) for _, name in GUESTS}
    assert len(set(homes.values())) == 2, homes  # on two different nodes
    target = next(n for n in NODES if n not in homes.values())
    page.goto(site.url + "/")
    page.screenshot(path=os.path.join(SCREENSHOTS, "dashboard.png"), full_page=True)
    page.goto(site.url + "/matrix/")  # the synced lab's facts say both may go there live
    for name, home in homes.items():
        row = page.locator(f"tr[data-server='{name}']")
        expect(row.locator(f"td[data-resource='{target}']")).to_have_attribute("data-kind", "live")
        expect(row.locator(f"td[data-resource='{home}']")).to_have_attribute("data-kind", "here")
    page.screenshot(path=os.path.join(SCREENSHOTS, "matrix.png"), full_page=True)

    dialog = open_dialog(page, site, list(homes), target)
    page.screenshot(path=os.path.join(SCREENSHOTS, "dialog-preflight.png"), full_page=True)
    start_from_dialog(page, dialog)

    shaped_link(target, 120)  # ~10 s per guest, so the bar is seen moving
    site.start_worker()
    seen = set()
    shot = False
    deadline = time.monotonic() + SLOW / 1000
    while True:
        rows = page.locator("tr[data-task]")
        statuses = [rows.nth(i).get_attribute("data-status") for i in range(rows.count())]
        for i in range(rows.count()):
            value = float(rows.nth(i).locator("[role=progressbar]").get_attribute("aria-valuenow"))
            seen.add(value)
            if 0 < value < 100 and not shot:
                task_url = rows.nth(i).locator("a").first.get_attribute("href")
                detail = page.context.new_page()
                detail.goto(site.url + task_url)
                expect(detail.locator(".chart-line")).to_be_visible(timeout=30_000)
                detail.screenshot(path=os.path.join(SCREENSHOTS, "running-migration.png"),
                                  full_page=True)
                detail.close()
                shot = True
        if statuses == ["finished", "finished"]:
            break
        assert not set(statuses) & {"failed", "cancelled", "needs-attention"}, \
            page.locator(".group-live").inner_text()
        assert time.monotonic() < deadline, f"tasks still {statuses}"
        page.wait_for_timeout(400)
    assert any(0 < v < 100 for v in seen) and len(seen) >= 3, seen  # the bar moved
    expect(page.locator(".group-live")).to_have_attribute("data-status", "finished")
    assert page.locator(".group-live[hx-trigger]").count() == 0  # polling stopped
    for name in homes:
        assert where(lab, name) == {target: "running"}


def test_it_evacuates_a_node_through_its_plan_and_returns_the_servers(site, page, lab):
    node = home_of(lab, "ui-a")
    before = sorted(s["name"] for s in lab.servers() if s["node"] == node)
    page.goto(f"{site.url}/resources/{site.fleet[node]}")
    page.click("#evacuate-button")
    expect(page.locator("h1")).to_contain_text(f"Evacuate {node}")
    plan = page.locator("table.plan")
    for name in before:
        expect(plan.locator(f"tr[data-server='{name}']")).to_be_visible()
    assert page.locator("table.unplaced").count() == 0, page.locator("main").inner_text()
    page.screenshot(path=os.path.join(SCREENSHOTS, "evacuation-plan.png"), full_page=True)

    site.start_worker()
    page.once("dialog", lambda d: d.accept())
    page.click("#approve-button")
    expect(page.locator("#evacuation-status")).to_have_attribute("data-status", "finished",
                                                                 timeout=SLOW * 2)
    assert not [s for s in lab.servers() if s["node"] == node]  # nothing left on it

    page.goto(f"{site.url}/resources/{site.fleet[node]}")
    expect(page.locator("h1 .badge")).to_have_text("maintenance")
    expect(page.locator("#evacuate-button")).to_have_count(0)
    page.goto(site.url + "/matrix/")  # a node in maintenance receives no migrations
    cell = page.locator(f"tr[data-server='ui-a'] td[data-resource='{node}']")
    expect(cell).to_have_attribute("data-kind", "no")
    assert "maintenance" in cell.get_attribute("title")
    page.goto(f"{site.url}/resources/{site.fleet[node]}")
    page.click("#exit-maintenance")
    expect(page.locator("h1 .badge")).to_have_text("active")
    page.click("#return-button")
    expect(page.locator("h1")).to_contain_text(f"Return servers to {node}")
    page.once("dialog", lambda d: d.accept())
    page.click("#approve-button")
    expect(page.locator("#evacuation-status")).to_have_attribute("data-status", "finished",
                                                                 timeout=SLOW * 2)
    assert sorted(s["name"] for s in lab.servers() if s["node"] == node) == before


def test_it_cancels_a_migration_from_its_page(site, page, lab, shaped_link):
    source = home_of(lab, "ui-a")
    target = next(n for n in NODES if n != source)
    dialog = open_dialog(page, site, ["ui-a"], target)
    start_from_dialog(page, dialog)
    shaped_link(target, 20)  # a minute of copying: time enough to cancel
    site.start_worker()

    page.click("tr[data-server='ui-a'] a")
    live = page.locator(".task-live")
    expect(live).to_have_attribute("data-status", "running", timeout=SLOW)
    # Cancel once the bar moves, as a person would: the monitor loop is reporting by then, so the
    # test proves a cancel of a running copy (see the engine's fix in 043d253 for why that matters).
    bar = live.locator("[role=progressbar]")
    wait_until(lambda: float(bar.get_attribute("aria-valuenow") or 0) > 0, SLOW / 1000,
               "the migration's progress")
    page.once("dialog", lambda d: d.accept())
    page.locator("button.cancel").click()
    expect(page.locator(".cancel-requested")).to_be_visible()
    expect(page.locator(".task-live")).to_have_attribute("data-status", "cancelled",
                                                         timeout=SLOW)
    timeline = page.locator("ol.timeline")
    expect(timeline.locator("[data-kind='cancel-requested']")).to_have_count(1)
    expect(page.locator(".task-live[hx-trigger]")).to_have_count(0)
    assert where(lab, "ui-a") == {source: "running"}  # it never left

"""A hostile compute resource name in a real Chromium: the confirm shows it, no script runs.

No lab: the rows are written straight into the test database and the app is
served from a thread (werkzeug's make_server on 127.0.0.1, a free port),
stopped after the test. The name `x');window.__pwned=1;('` used to close the
string of an inline onclick="confirm('…')" on the compute resource page and
the evacuation plan page and run as script.
"""
import os
import re
import threading

import pytest
from playwright.sync_api import expect, sync_playwright
from werkzeug.serving import make_server

from app import status
from app.extensions import db
from app.models import ComputeResource, Server
from tests.browser.test_demo import CHROMIUM_ARGS, SCREENSHOTS
from tests.fixtures.app import PASSWORD
from tests.unit.test_security import PAYLOAD, add_hostile_rows

pytestmark = pytest.mark.browser


@pytest.fixture
def served(app, redis_conn):
    """The test app served by werkzeug from a thread; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)


@pytest.fixture
def hostile(app):
    """A compute resource with the payload for a name, and a planned evacuation of it."""
    return add_hostile_rows(app)


@pytest.fixture
def page(served, bob):
    """A Chromium page signed in as bob (operator); console errors are kept on page.errors."""
    os.makedirs(SCREENSHOTS, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        tab = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
        tab.set_default_timeout(30_000)
        tab.errors = []
        tab.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
        tab.goto(served + "/login")
        tab.fill("input[name=username]", "bob")
        tab.fill("input[name=password]", PASSWORD)
        tab.click("button[type=submit]")
        expect(tab.locator("h1")).to_contain_text("Compute resources")
        yield tab
        browser.close()


def confirm_text(page, button, accept):
    """Click `button`, answer the confirm dialog; returns the dialog's message."""
    seen = []

    def answer(dialog):
        seen.append((dialog.type, dialog.message))
        dialog.accept() if accept else dialog.dismiss()

    page.once("dialog", answer)
    button.click()
    page.wait_for_timeout(300)  # let a dismissed form stay put (or an accepted one leave)
    assert len(seen) == 1 and seen[0][0] == "confirm", seen
    return seen[0][1]


def test_it_shows_a_hostile_name_in_the_confirm_and_runs_no_script(page, served, hostile, app):
    resource_url = f"{served}/resources/{hostile['resource']}"
    response = page.goto(resource_url)
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    expect(page.locator("h1")).to_contain_text(PAYLOAD)
    button = page.locator("button[data-confirm]", has_text="Maintenance")
    assert confirm_text(page, button, accept=False) == f"Put {PAYLOAD} in maintenance?"
    assert page.evaluate("typeof window.__pwned") == "undefined"
    expect(page.locator("h1 .badge")).to_have_text(status.RESOURCE_ACTIVE)  # dismissed: nothing sent

    # htmx still works under the policy: a button posts with the CSRF header and swaps a fragment.
    page.click("text=Test connection")
    expect(page.locator("#job-area .job")).to_contain_text("test_connection")
    page.screenshot(path=os.path.join(SCREENSHOTS, "csp-resource.png"), full_page=True)

    response = page.goto(f"{served}/evacuations/{hostile['evacuation']}")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    message = confirm_text(page, page.locator("#approve-button"), accept=False)
    assert message == f"Evacuate {PAYLOAD}: move 1 server(s) and put the node in maintenance?"
    assert page.evaluate("typeof window.__pwned") == "undefined"

    page.goto(resource_url)  # accepted, the plain form does submit
    assert confirm_text(page, page.locator("button[data-confirm]", has_text="Maintenance"),
                        accept=True) == f"Put {PAYLOAD} in maintenance?"
    expect(page.locator("h1 .badge")).to_have_text(status.RESOURCE_MAINTENANCE)
    assert page.evaluate("typeof window.__pwned") == "undefined"
    # Nothing on these pages needed what the policy forbids (an inline script, htmx's <style>).
    assert not [e for e in page.errors if "Content Security Policy" in e], page.errors


def test_it_keeps_htmx_and_the_static_behaviours_working_under_the_policy(page, served, app):
    with app.app_context():
        node = ComputeResource(name="node1", host="127.0.0.1", user="root", key_path="/k")
        db.session.add_all([node, Server(uuid="00000000-0000-4000-8000-0000000000a1", name="web-1",
                                         compute_resource=node, state=status.SERVER_RUNNING),
                            Server(uuid="00000000-0000-4000-8000-0000000000a2", name="db-1",
                                   compute_resource=node, state=status.SERVER_STOPPED)])
        db.session.commit()
        node_id = node.id
    page.goto(served + "/servers/")
    page.select_option("select[name=state]", "stopped")  # hx-trigger=change, hx-push-url
    expect(page).to_have_url(f"{served}/servers/?q=&state=stopped&resource=")
    expect(page.locator("tr[data-server]")).to_have_count(1)
    page.locator("tr[data-server] input[name=server]").check()
    page.click("#migrate-button")  # the dialog comes in through htmx ...
    dialog = page.locator("#migrate-dialog")
    expect(dialog).to_be_visible()
    dialog.locator("button[data-close-dialog]").click()  # ... and leaves through ferry.js
    expect(dialog).to_have_count(0)

    page.goto(served + "/matrix/")
    page.select_option("select[name=resource]", str(node_id))  # data-autosubmit
    expect(page).to_have_url(re.compile(rf"/matrix/\?resource={node_id}"))
    assert not [e for e in page.errors if "Content Security Policy" in e], page.errors

"""The web surface: security headers, the session cookie, proxies, request size, no inline script.

The browser half (the payload in a real Chromium under the CSP) is
tests/browser/test_csp.py.
"""
import html
import pathlib
import re

import pytest
from redis import Redis

from app import create_app, security, status, upgrade_database
from app.extensions import db
from app.models import ApiToken, AuditEntry, ComputeResource, Evacuation, User
from app.services.jobs import redis_connection
from tests.fixtures.app import PASSWORD, TEST_REDIS_URL, csrf_token_of

TEMPLATES = pathlib.Path(__file__).resolve().parents[2] / "templates"
PAYLOAD = "x');window.__pwned=1;('"


@pytest.fixture
def make_app(tmp_path):
    """`make_app(**settings)`: a test app like `app`, with settings read at creation (ProxyFix)."""
    made = []

    def build(**settings):
        application = create_app({
            "TESTING": True, "SECRET_KEY": "test", "INSTANCE_PATH": str(tmp_path / "instance"),
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'ferry.sqlite'}",
            "REDIS_URL": TEST_REDIS_URL, **settings})
        upgrade_database(application)
        made.append(application)
        return application
    yield build
    for application in made:
        with application.app_context():
            db.session.remove()
            for engine in db.engines.values():
                engine.dispose()


def session_cookie_of(response):
    """The Set-Cookie header of the session cookie."""
    cookies = [c for c in response.headers.getlist("Set-Cookie") if c.startswith("session=")]
    assert cookies, response.headers
    return cookies[0]


@pytest.mark.parametrize("path", ["/login", "/static/app.css", "/no-such-page", "/api/v1/servers"])
def test_it_sends_the_security_headers_on_every_response(client, path):
    response = client.get(path)
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy.split("script-src", 1)[1].split(";")[0]
    assert "unsafe-eval" not in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["X-Frame-Options"] == "DENY"


def test_it_keeps_the_session_cookie_off_other_sites_and_out_of_scripts(client):
    cookie = session_cookie_of(client.get("/login")).lower()
    assert "samesite=lax" in cookie and "httponly" in cookie
    assert "secure" not in cookie.replace("samesite", "")  # plain http: a Secure cookie would vanish


def test_it_makes_the_session_cookie_secure_over_https(make_app):
    client = make_app().test_client()
    cookie = session_cookie_of(client.get("/login", base_url="https://ferry.example"))
    assert "; Secure" in cookie


def test_it_makes_the_cookie_secure_when_the_setting_says_so(make_app):
    client = make_app(SESSION_COOKIE_SECURE=True).test_client()
    assert "; Secure" in session_cookie_of(client.get("/login"))


def test_it_believes_forwarded_headers_only_from_trusted_proxies(make_app, redis_conn):
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.9"}
    untrusted = make_app().test_client()
    assert "; Secure" not in session_cookie_of(untrusted.get("/login", headers=forwarded))

    app = make_app(TRUSTED_PROXIES=1)
    client = app.test_client()
    assert "; Secure" in session_cookie_of(client.get("/login", headers=forwarded))
    forwarded_for = {"X-Forwarded-For": "198.51.100.9"}  # plain http: the test client keeps the cookie
    token = csrf_token_of(client.get("/login", headers=forwarded_for).get_data(as_text=True))
    client.post("/login", headers=forwarded_for,
                data={"username": "nobody", "password": "x", "csrf_token": token})
    with app.app_context():  # the throttle and the audit log see the client, not the proxy
        entry = db.session.scalar(db.select(AuditEntry).filter_by(action="user.login_failed"))
        assert entry.detail["address"] == "198.51.100.9"


def test_it_refuses_a_request_body_over_the_limit_on_every_route(make_app):
    app = make_app(MAX_CONTENT_LENGTH=4096)
    with app.app_context():
        admin = User(username="alice", role="admin")
        admin.set_password(PASSWORD)
        resource = ComputeResource(name="node1", host="127.0.0.1", user="root", key_path="/k")
        db.session.add_all([admin, resource])
        db.session.flush()
        row, plaintext = ApiToken.issue(admin, "script")
        db.session.add(row)
        db.session.commit()
        url = f"/api/v1/compute-resources/{resource.id}/maintenance"
    client = app.test_client()
    big = "x" * 5000
    assert client.post("/login", data={"username": big, "password": big}).status_code == 413
    response = client.post(url, data='{"on": true, "pad": "' + big + '"}',
                           content_type="application/json",
                           headers={"Authorization": f"Bearer {plaintext}"})
    assert response.status_code == 413
    with app.app_context():
        assert db.session.scalar(db.select(ComputeResource)).status == status.RESOURCE_ACTIVE


def test_it_limits_the_body_to_one_mib_by_default(client):
    response = client.post("/login", data={"username": "x" * (1024 * 1024 + 1), "password": "x"})
    assert response.status_code == 413


def test_it_leaves_the_webhook_its_own_body_limit(make_app):
    client = make_app(MAX_CONTENT_LENGTH=1024).test_client()
    response = client.post("/hooks/nosuchsource", data="{" + " " * 4000 + "}",
                           content_type="application/json")
    assert response.status_code != 413  # read under the webhook's own 1 MiB limit


INLINE = re.compile(r"""\son[a-z]+\s*=|\shx-on[:\-]|javascript:|<script(?![^>]*\ssrc=)""", re.I)


def test_it_has_no_inline_script_in_any_template():
    found = [f"{path.relative_to(TEMPLATES)}:{number}: {line.strip()}"
             for path in sorted(TEMPLATES.rglob("*.html"))
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if INLINE.search(line)]
    assert not found, "\n".join(found)


def add_hostile_rows(app):
    """A compute resource named PAYLOAD and a planned evacuation of it (rows only, no node)."""
    with app.app_context():
        resource = ComputeResource(name=PAYLOAD, host="127.0.0.1", user="root", key_path="/k")
        db.session.add(resource)
        db.session.flush()
        evacuation = Evacuation(compute_resource=resource, plan={"moves": [
            {"server_id": 1, "server": "web-1", "destination_id": 2, "destination": "node2",
             "mode": "live", "reasons": ["most free memory"]}], "unplaced": []})
        db.session.add(evacuation)
        db.session.commit()
        return {"resource": resource.id, "evacuation": evacuation.id}


def test_it_puts_a_hostile_resource_name_into_the_confirm_as_text(app, client, bob, login):
    rows = add_hostile_rows(app)
    pages = [f"/resources/{rows['resource']}", f"/evacuations/{rows['evacuation']}"]
    login(client, "bob")
    for url in pages:
        page = client.get(url).get_data(as_text=True)
        assert "onclick" not in page and PAYLOAD not in page, url  # only ever escaped
        confirms = [html.unescape(m) for m in re.findall(r'data-confirm="([^"]*)"', page)]
        assert any(PAYLOAD in text for text in confirms), url


def test_it_sets_htmx_to_inject_no_inline_style_and_eval_nothing(client, alice, login):
    login(client, "alice")
    page = client.get("/").get_data(as_text=True)
    assert '"includeIndicatorStyles": false' in page and '"allowEval": false' in page
    assert "/static/ferry.js" in page


def test_it_writes_the_headers_even_on_an_error_page(client, charlie, login):
    login(client, "charlie")
    response = client.get("/resources/new")  # 403 for a viewer
    assert response.status_code == 403
    assert response.headers["Content-Security-Policy"] == security.CONTENT_SECURITY_POLICY


def test_it_reaches_a_redis_with_a_password_through_the_url_unchanged(app, tmp_path):
    """A real redis-server with requirepass on a free port; the app's URL carries the password."""
    import socket
    import subprocess
    import time
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--requirepass", "s3cret:pw@x", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        url = f"redis://:{'s3cret%3Apw%40x'}@127.0.0.1:{port}/3"
        app.config["REDIS_URL"] = url
        deadline = time.monotonic() + 10
        while True:
            try:
                with app.app_context():
                    conn = redis_connection()
                    assert conn.ping()
                break
            except Exception:  # noqa: BLE001 - the server is still starting
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert conn.connection_pool.connection_kwargs["password"] == "s3cret:pw@x"
        assert conn.connection_pool.connection_kwargs["db"] == 3
        with pytest.raises(Exception, match="(?i)auth"):
            Redis(host="127.0.0.1", port=port).ping()  # without the password: refused
    finally:
        proc.terminate()
        proc.wait(10)


def test_it_runs_the_container_as_an_unprivileged_user():
    """Read from the Containerfile: no image is built here (no registry to pull the base from)."""
    lines = [line.strip() for line in
             (TEMPLATES.parent / "Containerfile").read_text().replace("\\\n", " ").splitlines()]
    users = [i for i, line in enumerate(lines) if line.upper().startswith("USER ")]
    assert users, "no USER directive: the container runs as root"
    user = lines[users[-1]].split()[1].split(":")[0]
    assert user not in ("root", "0")
    entrypoint = next(i for i, line in enumerate(lines) if line.upper().startswith("ENTRYPOINT"))
    later_runs = [line for line in lines[users[-1]:entrypoint] if line.upper().startswith("RUN ")]
    assert users[-1] < entrypoint and not later_runs

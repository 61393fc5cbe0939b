"""Login, roles, CSRF and API tokens."""
from urllib.parse import quote

import pytest

from app import status
from app.extensions import db
from app.models import ApiToken, AuditEntry, ComputeResource, User
from tests.fixtures.app import PASSWORD, csrf_token_of


def add_resource(app):
    """A compute resource row (no node behind it: these tests never contact one)."""
    with app.app_context():
        resource = ComputeResource(name="node1", host="127.0.0.1", user="root", key_path="/k")
        db.session.add(resource)
        db.session.commit()
        return resource.id


def test_it_redirects_an_anonymous_request_to_login(client):
    response = client.get("/servers/")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")


def test_it_tells_htmx_to_go_to_login_instead_of_swapping_it_in(client):
    response = client.get("/servers/", headers={"HX-Request": "true"})
    assert response.status_code == 401
    assert response.headers["HX-Redirect"] == "/login"


def test_it_refuses_a_wrong_password(client, alice):
    response = client.post("/login", data={"username": "alice", "password": "nope"})
    assert response.status_code in (400, 401)  # 400: no CSRF token; 401: wrong password


def test_it_signs_in_and_records_it(app, client, alice, login):
    login(client, "alice")
    assert client.get("/").status_code == 200
    with app.app_context():
        assert db.session.scalar(db.select(AuditEntry).filter_by(action="user.login"))


def test_it_forbids_a_viewer_to_change_anything(app, client, charlie, login):
    resource_id = add_resource(app)
    login(client, "charlie")
    assert client.get(f"/resources/{resource_id}").status_code == 200
    for url in (f"/resources/{resource_id}/sync", f"/resources/{resource_id}/test",
                f"/resources/{resource_id}/maintenance", "/resources/new"):
        assert client.post(url).status_code == 403, url
    with app.app_context():
        assert db.session.get(ComputeResource, resource_id).status == status.RESOURCE_ACTIVE


def test_it_lets_an_operator_sync_but_not_add_resources(app, client, bob, login, redis_conn):
    resource_id = add_resource(app)
    login(client, "bob")
    assert client.post(f"/resources/{resource_id}/sync").status_code == 200
    assert client.get("/resources/new").status_code == 403
    with app.app_context():
        assert db.session.scalar(db.select(AuditEntry).filter_by(action="resource.sync")).user.username == "bob"


def test_it_refuses_a_post_without_csrf_token(app, client, alice, login):
    resource_id = add_resource(app)
    login(client, "alice")
    del client.environ_base["HTTP_X_CSRFTOKEN"]
    response = client.post(f"/resources/{resource_id}/maintenance", data={"on": "1"})
    assert response.status_code == 400
    with app.app_context():
        assert db.session.get(ComputeResource, resource_id).status == status.RESOURCE_ACTIVE


def test_it_accepts_an_api_token_without_csrf_and_a_wrong_one_not_at_all(app, client, bob):
    resource_id = add_resource(app)
    with app.app_context():
        token, plaintext = ApiToken.issue(db.session.get(User, bob), "script")
        db.session.add(token)
        db.session.commit()
    ok = client.get(f"/resources/{resource_id}", headers={"Authorization": f"Bearer {plaintext}"})
    assert ok.status_code == 200
    bad = client.get(f"/resources/{resource_id}", headers={"Authorization": "Bearer fry_wrong"})
    assert bad.status_code == 302
    with app.app_context():
        assert db.session.scalar(db.select(ApiToken)).last_used_at is not None


def test_it_creates_the_first_admin_from_the_cli(app, runner):
    result = runner.invoke(args=["users", "create-admin", "--username", "root"])
    assert result.exit_code == 0 and "password:" in result.output
    password = result.output.rsplit("password:", 1)[1].strip()
    with app.app_context():
        user = db.session.scalar(db.select(User).filter_by(username="root"))
        assert user.role == status.ROLE_ADMIN and user.check_password(password)


# ---------------------------------------------------------------- login: throttle, audit, next

def post_login(client, username, password, next_url=None):
    """POST the login form with the page's CSRF token; `next_url` goes in raw (percent-quoted)."""
    token = csrf_token_of(client.get("/login").get_data(as_text=True))
    url = "/login" + (f"?next={quote(next_url, safe='')}" if next_url is not None else "")
    return client.post(url, data={"username": username, "password": password, "csrf_token": token})


def audit_actions(app):
    """(action, target, address) of every audit entry, oldest first."""
    with app.app_context():
        return [(e.action, e.target, e.detail.get("address"))
                for e in db.session.scalars(db.select(AuditEntry).order_by(AuditEntry.id))]


@pytest.mark.parametrize("target", [
    "/\\evil.example", "//evil.example", "https://evil.example", "%2F%2Fevil.example",
    "/\\/evil.example", "/%5Cevil.example", "/\t/evil.example", "\\\\evil.example",
    "http:evil.example", " //evil.example", "/\n/evil.example", "https:/evil.example",
    "javascript:alert(1)",
])
def test_it_never_follows_next_off_the_site(client, alice, redis_conn, target):
    response = post_login(client, "alice", PASSWORD, next_url=target)
    assert response.status_code == 302
    assert response.headers["Location"] == "/"


def test_it_follows_next_to_a_path_on_the_site(client, alice, redis_conn):
    response = post_login(client, "alice", PASSWORD, next_url="/servers/?state=stopped")
    assert response.headers["Location"] == "/servers/?state=stopped"


def test_it_audits_failed_logins_for_known_and_unknown_users(app, client, alice, redis_conn):
    assert post_login(client, "alice", "wrong").status_code == 401
    assert post_login(client, "mallory", "guess").status_code == 401
    assert post_login(client, "alice", PASSWORD).status_code == 302
    assert audit_actions(app) == [("user.login_failed", "user:alice", "127.0.0.1"),
                                  ("user.login_failed", "user:mallory", "127.0.0.1"),
                                  ("user.login", "user:alice", "127.0.0.1")]


def test_it_throttles_an_account_after_n_failures(app, client, alice, redis_conn):
    app.config["LOGIN_MAX_FAILURES_PER_ACCOUNT"] = 3
    for _ in range(3):
        assert post_login(client, "alice", "wrong").status_code == 401
    throttled = post_login(client, "alice", PASSWORD)  # even the right password waits now
    assert throttled.status_code == 429
    assert int(throttled.headers["Retry-After"]) > 0
    assert "Too many failed sign-ins" in throttled.get_data(as_text=True)
    assert client.get("/").status_code == 302  # not signed in
    assert [a for a, _, _ in audit_actions(app)] == ["user.login_failed"] * 3 + ["user.login_throttled"]


def test_it_throttles_one_address_across_accounts(app, client, alice, bob, redis_conn):
    app.config["LOGIN_MAX_FAILURES_PER_ADDRESS"] = 2
    assert post_login(client, "alice", "wrong").status_code == 401
    assert post_login(client, "nobody", "wrong").status_code == 401
    assert post_login(client, "bob", PASSWORD).status_code == 429
    elsewhere = app.test_client()  # another address is not held back
    elsewhere.environ_base["REMOTE_ADDR"] = "192.0.2.7"
    assert post_login(elsewhere, "bob", PASSWORD).status_code == 302


def test_it_forgets_an_accounts_failures_after_a_success(app, client, alice, redis_conn):
    app.config["LOGIN_MAX_FAILURES_PER_ACCOUNT"] = 3
    for _ in range(2):
        post_login(client, "alice", "wrong")
    assert post_login(client, "alice", PASSWORD).status_code == 302
    client.post("/logout")
    for _ in range(2):
        assert post_login(client, "alice", "wrong").status_code == 401
    assert post_login(client, "alice", PASSWORD).status_code == 302

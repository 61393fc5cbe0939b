"""Credentials: API tokens (name, expiry, last use, revocation), disabled users, password changes.

From the CLI, from the "Your tokens" page and at the door (pages and /api/v1).
"""
import re
from datetime import timedelta

from app.extensions import db
from app.models import ApiToken, AuditEntry, User, utcnow
from tests.fixtures.app import PASSWORD, csrf_token_of


def bearer(plaintext):
    """The Authorization header of a token."""
    return {"Authorization": f"Bearer {plaintext}"}


def issue(app, user_id, name="script", **fields):
    """A token row for a user (fields such as expires_at set on it); returns (id, plaintext)."""
    with app.app_context():
        row, plaintext = ApiToken.issue(db.session.get(User, user_id), name)
        for key, value in fields.items():
            setattr(row, key, value)
        db.session.add(row)
        db.session.commit()
        return row.id, plaintext


def actions(app):
    """Every audit entry's action, oldest first."""
    with app.app_context():
        return [e.action for e in db.session.scalars(db.select(AuditEntry).order_by(AuditEntry.id))]


# ---------------------------------------------------------------- tokens at the door

def test_it_refuses_an_expired_token_and_records_use_of_a_live_one(app, client, bob):
    _, live = issue(app, bob, expires_at=utcnow() + timedelta(days=1))
    _, expired = issue(app, bob, name="old", expires_at=utcnow() - timedelta(seconds=1))
    assert client.get("/api/v1/me", headers=bearer(live)).status_code == 200
    refused = client.get("/api/v1/me", headers=bearer(expired))
    assert refused.status_code == 401 and refused.get_json()["error"]["code"] == "invalid_token"
    with app.app_context():
        rows = {t.name: t for t in db.session.scalars(db.select(ApiToken))}
        assert rows["script"].last_used_at is not None and rows["old"].last_used_at is None


def test_it_refuses_a_revoked_token_at_once(app, client, bob, runner):
    token_id, plaintext = issue(app, bob)
    assert client.get("/api/v1/me", headers=bearer(plaintext)).status_code == 200
    result = runner.invoke(args=["users", "revoke-token", str(token_id)])
    assert result.exit_code == 0, result.output
    assert "Revoked token" in result.output and "bob" in result.output
    assert client.get("/api/v1/me", headers=bearer(plaintext)).status_code == 401
    assert client.get("/servers/", headers=bearer(plaintext)).status_code == 302  # pages too
    assert actions(app)[-1] == "api_token.revoke"


def test_it_issues_a_token_with_an_expiry_from_the_cli_and_lists_it(app, runner, bob):
    issued = runner.invoke(args=["users", "token", "bob", "--name", "backup", "--expires-in-days", "30"])
    assert issued.exit_code == 0, issued.output
    assert "expires" in issued.output
    plaintext = issued.output.strip().splitlines()[-1]
    assert plaintext.startswith("fry_")
    listed = runner.invoke(args=["users", "tokens", "bob"])
    assert listed.exit_code == 0
    line = listed.output.strip()
    assert "backup" in line and "active" in line and "never used" in line
    assert plaintext not in listed.output  # only the prefix is ever shown again
    with app.app_context():
        token = db.session.scalar(db.select(ApiToken))
        assert timedelta(days=29) < token.expires_at - utcnow() <= timedelta(days=30)


def test_it_explains_bad_token_commands_and_changes_nothing(app, runner, bob):
    for args in (["users", "tokens", "nobody"], ["users", "revoke-token", "999"],
                 ["users", "token", "bob", "--expires-in-days", "0"],
                 ["users", "token", "nobody"]):
        result = runner.invoke(args=args)
        assert result.exit_code == 1 and "Error:" in result.output, (args, result.output)
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(ApiToken)) == 0


# ---------------------------------------------------------------- the "Your tokens" page

def test_it_creates_a_token_on_the_page_and_shows_it_once(app, client, charlie, login):
    login(client, "charlie")  # a viewer manages their own tokens too
    created = client.post("/account/tokens", data={"name": "grafana", "expires_in_days": "90"})
    assert created.status_code == 200
    page = created.get_data(as_text=True)
    plaintext = re.search(r'<code id="new-token">(fry_[^<]+)</code>', page).group(1)
    assert "grafana" in page and "expires" in page
    assert client.get("/api/v1/me", headers=bearer(plaintext)).get_json()["username"] == "charlie"
    again = client.get("/account/tokens").get_data(as_text=True)
    assert plaintext not in again and plaintext[:10] in again and 'data-state="active"' in again


def test_it_refuses_a_token_without_a_name_or_with_a_bad_expiry(app, client, bob, login):
    login(client, "bob")
    assert client.post("/account/tokens", data={"name": "", "expires_in_days": ""}).status_code == 400
    bad = client.post("/account/tokens", data={"name": "x", "expires_in_days": "soon"})
    assert bad.status_code == 400 and "whole number of days" in bad.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(ApiToken)) == 0


def test_it_revokes_ones_own_token_but_not_someone_elses(app, client, bob, charlie, login):
    mine, plaintext = issue(app, bob)
    theirs, other = issue(app, charlie)
    login(client, "bob")
    assert client.post(f"/account/tokens/{theirs}/revoke").status_code == 303
    assert client.get("/api/v1/me", headers=bearer(other)).status_code == 200  # untouched
    assert client.post(f"/account/tokens/{mine}/revoke").status_code == 303
    assert client.get("/api/v1/me", headers=bearer(plaintext)).status_code == 401
    page = client.get("/account/tokens").get_data(as_text=True)
    assert f'data-token="{mine}" data-state="revoked"' in page and f'data-token="{theirs}"' not in page


# ---------------------------------------------------------------- disabled users, passwords

def test_it_ends_a_disabled_users_sessions_and_tokens_at_once(app, client, bob, login, runner,
                                                              redis_conn):
    _, plaintext = issue(app, bob)
    login(client, "bob")
    assert client.get("/servers/").status_code == 200
    result = runner.invoke(args=["users", "disable", "bob"])
    assert result.exit_code == 0 and "disabled" in result.output
    assert client.get("/servers/").status_code == 302  # the open session is gone
    assert client.get("/api/v1/me", headers=bearer(plaintext)).status_code == 401
    fresh = app.test_client()
    token = csrf_token_of(fresh.get("/login").get_data(as_text=True))
    refused = fresh.post("/login", data={"username": "bob", "password": PASSWORD, "csrf_token": token})
    assert refused.status_code == 401 and "disabled" in refused.get_data(as_text=True)

    assert runner.invoke(args=["users", "enable", "bob"]).exit_code == 0
    assert client.get("/servers/").status_code == 302  # an old session does not come back
    assert client.get("/api/v1/me", headers=bearer(plaintext)).status_code == 200
    assert actions(app)[-3:] == ["user.disable", "user.login_failed", "user.enable"]


def test_it_ends_other_sessions_when_the_password_changes(app, bob, login, redis_conn):
    here, elsewhere = login(app.test_client(), "bob"), login(app.test_client(), "bob")
    changed = here.post("/account/password", data={"current": PASSWORD, "new": "a much newer secret"})
    assert changed.status_code == 303
    assert here.get("/servers/").status_code == 200  # this session stays
    assert elsewhere.get("/servers/").status_code == 302  # the other one ends
    with app.app_context():
        assert db.session.scalar(db.select(User).filter_by(username="bob")).check_password(
            "a much newer secret")


def test_it_refuses_a_password_change_with_the_wrong_current_password(app, client, bob, login):
    login(client, "bob")
    refused = client.post("/account/password", data={"current": "nope", "new": "a much newer secret"})
    assert refused.status_code == 400
    with app.app_context():
        assert db.session.scalar(db.select(User).filter_by(username="bob")).check_password(PASSWORD)


def test_it_ends_sessions_when_an_admin_resets_a_password_from_the_cli(app, client, bob, login, runner):
    login(client, "bob")
    assert runner.invoke(args=["users", "create", "bob", "--role", "operator"]).exit_code == 0
    assert client.get("/servers/").status_code == 302

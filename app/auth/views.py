"""Login and logout pages; the request guard that enforces login, roles and CSRF."""
import functools
import re
from urllib.parse import unquote, urlsplit

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_user, logout_user
from sqlalchemy import bindparam
from werkzeug.security import check_password_hash, generate_password_hash

from app import access, status  # access: registers the API token loader with Flask-Login
from app.auth import throttle
from app.extensions import csrf, db, login_manager
from app.models import User
from app.services import audit

bp = Blueprint("auth", __name__)

PUBLIC_ENDPOINTS = {"auth.login", "static"}
# What a viewer may still POST: their own session, password and tokens.
SELF_SERVICE_ENDPOINTS = {"auth.logout", "auth.password", "auth.token_create", "auth.token_revoke"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# Machine-facing URLs check a bearer token on every request and answer in JSON (a redirect
# to the login page means nothing to a script); they never read the session cookie, so
# there is no CSRF to check. By path, so that an unknown /api/ URL gets a JSON 404 too.
MACHINE_PATHS = ("/api/", "/hooks/")
MACHINE_ENDPOINTS = {"observability.metrics", "observability.healthz"}


@functools.cache  # every page asks: built once (session.get built its query on each call)
def _user_by_id():
    return db.select(User).where(User.id == bindparam("user_id"))


@login_manager.user_loader
def load_user(session_id):
    """Find the signed-in user from the session cookie ("<id>:<epoch>", see User.get_id).

    A session from before the user's last password change or disabling carries an older
    epoch, and a disabled user has no session at all: both read as signed out.
    """
    user_id, _, epoch = session_id.partition(":")
    if not (user_id.isdigit() and epoch.isdigit()):
        return None  # a cookie from before epochs existed: sign in again
    user = db.session.scalars(_user_by_id(), {"user_id": int(user_id)}).first()
    if user is None or not user.is_active or user.session_epoch != int(epoch):
        return None
    return user


@bp.before_app_request
def guard():
    """Every page needs a login; a viewer changes nothing; forms and htmx carry a CSRF token."""
    if request.path.startswith(MACHINE_PATHS) or request.endpoint in MACHINE_ENDPOINTS:
        return None
    if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
        if request.method not in SAFE_METHODS:
            csrf.protect()
        return None
    if not current_user.is_authenticated:
        if request.headers.get("HX-Request"):
            # htmx would swap the login page into a fragment: send the browser there instead.
            return "", 401, {"HX-Redirect": url_for("auth.login")}
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    if request.method in SAFE_METHODS:
        return None
    # A token is not a cookie a third-party page could ride on: no CSRF token needed.
    if "ferry.api_token" not in request.environ:
        csrf.protect()
    if request.endpoint not in SELF_SERVICE_ENDPOINTS and not current_user.has_role(status.ROLE_OPERATOR):
        abort(403)
    return None


# Browsers read a backslash as a slash and drop tabs and newlines: "/\\evil" or "/\t/evil"
# would leave the site as surely as "//evil".
_UNSAFE_IN_NEXT = re.compile(r"[\\\x00-\x1f\x7f]")


def _safe_next(target):
    """Only follow `next` to a path on this site, never to another host.

    Checked as given and once more percent-decoded, for whatever decodes it again.
    """
    if not target:
        return url_for("dashboard.index")
    for form in (target, unquote(target)):
        if (not form.startswith("/") or form.startswith("//") or _UNSAFE_IN_NEXT.search(form)
                or urlsplit(form).scheme or urlsplit(form).netloc):
            return url_for("dashboard.index")
    return target


_DUMMY_HASH = []


def _check_unknown_user(password):
    """Spend on an unknown username the time a real password check takes (no timing oracle)."""
    if not _DUMMY_HASH:
        _DUMMY_HASH.append(generate_password_hash("ferry: no such user"))
    check_password_hash(_DUMMY_HASH[0], password)


def _failed(username, address, reason):
    """Count and audit a failed sign-in and answer as for any wrong password."""
    throttle.record_failure(username, address)
    audit.record("user.login_failed", f"user:{username[:100]}", {"address": address, "reason": reason})
    db.session.commit()
    flash("This account is disabled; ask an admin." if reason == "disabled"
          else "Wrong username or password.", "error")
    return render_template("auth/login.html"), 401


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Show the login form; sign in on a correct username and password."""
    if request.method == "POST":
        username = request.form.get("username", "").strip()
        password = request.form.get("password", "")
        address = request.remote_addr
        wait = throttle.retry_after(username, address)
        if wait:
            audit.record("user.login_throttled", f"user:{username[:100]}", {"address": address})
            db.session.commit()
            minutes = -(-wait // 60)
            flash(f"Too many failed sign-ins for this account or from your address. "
                  f"Try again in {minutes} minute{'s' if minutes != 1 else ''}.", "error")
            return render_template("auth/login.html"), 429, {"Retry-After": str(wait)}
        user = db.session.scalar(db.select(User).filter_by(username=username))
        if user is None:
            _check_unknown_user(password)
            return _failed(username, address, "unknown user")
        if not user.check_password(password):
            return _failed(username, address, "wrong password")
        if not user.is_active:
            return _failed(username, address, "disabled")
        login_user(user)
        throttle.clear_account(username)
        audit.record("user.login", target=f"user:{user.username}", detail={"address": address},
                     user=user)
        db.session.commit()
        return redirect(_safe_next(request.args.get("next")))
    return render_template("auth/login.html")


@bp.route("/logout", methods=["POST"])
def logout():
    """Sign out (POST only, so a link on another site cannot do it)."""
    logout_user()
    return redirect(url_for("auth.login"))

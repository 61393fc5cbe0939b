"""Login and logout pages; the request guard that enforces login, roles and CSRF."""
import functools
from urllib.parse import urlsplit

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_user, logout_user

from app import status
from app.extensions import csrf, db, login_manager
from app.models import ApiToken, User, utcnow
from app.services import audit

bp = Blueprint("auth", __name__)

PUBLIC_ENDPOINTS = {"auth.login", "static"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# Machine-facing URLs check a bearer token on every request and answer in JSON (a redirect
# to the login page means nothing to a script); they never read the session cookie, so
# there is no CSRF to check. By path, so that an unknown /api/ URL gets a JSON 404 too.
MACHINE_PATHS = ("/api/", "/hooks/")
MACHINE_ENDPOINTS = {"observability.metrics", "observability.healthz"}


@login_manager.user_loader
def load_user(user_id):
    """Find the signed-in user from the session cookie."""
    return db.session.get(User, int(user_id))


@login_manager.request_loader
def load_user_from_token(req):
    """Scripts send `Authorization: Bearer <token>`; only the token's hash is looked up."""
    header = req.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return None
    token = db.session.scalar(db.select(ApiToken).filter_by(
        token_hash=ApiToken.hash(header[len("Bearer "):].strip())))
    if token is None:
        return None
    token.last_used_at = utcnow()
    db.session.commit()
    req.environ["ferry.api_token"] = token.id
    return token.user


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
    if request.endpoint != "auth.logout" and not current_user.has_role(status.ROLE_OPERATOR):
        abort(403)
    return None


def require_role(role):
    """Decorate a view that needs at least `role` (the guard already stops viewers' POSTs)."""
    def decorator(view):
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            if not current_user.is_authenticated or not current_user.has_role(role):
                abort(403)
            return view(*args, **kwargs)
        return wrapped
    return decorator


def _safe_next(target):
    """Only follow `next` to a path on this site, never to another host."""
    if target and not urlsplit(target).netloc and target.startswith("/"):
        return target
    return url_for("dashboard.index")


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Show the login form; sign in on a correct username and password."""
    if request.method == "POST":
        user = db.session.scalar(db.select(User).filter_by(
            username=request.form.get("username", "").strip()))
        if user is not None and user.check_password(request.form.get("password", "")):
            login_user(user)
            audit.record("user.login", target=f"user:{user.username}", user=user)
            db.session.commit()
            return redirect(_safe_next(request.args.get("next")))
        flash("Wrong username or password.", "error")
        return render_template("auth/login.html"), 401
    return render_template("auth/login.html")


@bp.route("/logout", methods=["POST"])
def logout():
    """Sign out (POST only, so a link on another site cannot do it)."""
    logout_user()
    return redirect(url_for("auth.login"))

"""A person's own credentials: "Your tokens" (list, create, revoke) and the password change."""
from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user, login_user

from app.auth.views import bp
from app.errors import FerryError
from app.services import credentials


@bp.route("/account/tokens")
def tokens():
    """The signed-in user's API tokens, newest first."""
    return render_template("auth/tokens.html", tokens=credentials.tokens_of(current_user))


@bp.route("/account/tokens", methods=["POST"])
def token_create():
    """Issue a token with a name and an optional lifetime; its plaintext is shown this once."""
    user = current_user._get_current_object()
    try:
        days = credentials.parse_days(request.form.get("expires_in_days"))
        row, plaintext = credentials.issue_token(user, request.form.get("name"), days, by=user)
    except FerryError as exc:
        flash(str(exc), "error")
        return render_template("auth/tokens.html", tokens=credentials.tokens_of(user)), 400
    return render_template("auth/tokens.html", tokens=credentials.tokens_of(user),
                           created=row, plaintext=plaintext)


@bp.route("/account/tokens/<int:token_id>/revoke", methods=["POST"])
def token_revoke(token_id):
    """Revoke one of one's own tokens; scripts using it are refused from the next request."""
    try:
        token = credentials.revoke_token(token_id, owner=current_user._get_current_object())
    except FerryError as exc:
        flash(str(exc), "error")
        return redirect(url_for("auth.tokens"), 303)
    flash(f"Token {token.name} ({token.prefix}…) revoked.", "success")
    return redirect(url_for("auth.tokens"), 303)


@bp.route("/account/password", methods=["GET", "POST"])
def password():
    """Change one's password; every other session of this user ends, this one stays."""
    if request.method == "POST":
        user = current_user._get_current_object()
        try:
            credentials.change_password(user, request.form.get("current", ""),
                                        request.form.get("new", ""))
        except FerryError as exc:
            flash(str(exc), "error")
            return render_template("auth/password.html"), 400
        login_user(user)  # this session carries the new epoch; the others do not
        flash("Password changed; your other sessions are signed out.", "success")
        return redirect(url_for("auth.tokens"), 303)
    return render_template("auth/password.html")

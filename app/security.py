"""The web surface's defences that apply to every request: proxy headers, cookies, response headers.

Ferry holds root SSH keys to every hypervisor, so its pages are locked down the
way a self-hosted admin tool's should be: no inline script can run (a name
that smuggles quote marks into a page stays text), no other site may frame a
page, and the session cookie is Secure whenever the browser talks HTTPS.
"""
from flask import request
from flask.sessions import SecureCookieSessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix

# Scripts and styles only from Ferry's own static files. Style *attributes* stay allowed: the
# meters and progress bars set a width, and a style attribute cannot run code.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "style-src-attr 'unsafe-inline'",
    "img-src 'self' data:",  # Pico draws its checkboxes and select arrows as data: SVGs
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])

HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Cross-Origin-Opener-Policy": "same-origin",
}


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie session, Secure on HTTPS unless SESSION_COOKIE_SECURE says otherwise."""

    def get_cookie_secure(self, app):
        """An explicit setting wins; unset (None), follow the request's scheme."""
        setting = app.config.get("SESSION_COOKIE_SECURE")
        return request.is_secure if setting is None else bool(setting)


def add_headers(response):
    """Put the security headers on every response (a view may set a stricter one itself)."""
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def register(app):
    """Wire ProxyFix for FERRY_TRUSTED_PROXIES, the session cookie and the response headers."""
    proxies = app.config["TRUSTED_PROXIES"]
    if proxies:
        # Believe exactly that many hops of X-Forwarded-For/-Proto/-Host/-Port, no more:
        # a client could otherwise claim any address (and dodge the login throttle).
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies,
                                x_host=proxies, x_port=proxies)
    app.session_interface = SessionInterface()
    app.after_request(add_headers)

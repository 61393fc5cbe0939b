"""Template filters and globals shared by every page."""
import functools
from datetime import datetime, timezone

from flask import current_app, has_request_context, render_template, request, url_for
from jinja2 import Undefined
from markupsafe import Markup

from app import status

# Fragments kept per worker process: a few pages of each table, some 40 KB each.
FRAGMENTS_KEPT = 64
# Links kept per worker process: the layout's and the pages' own, and one per resource shown.
LINKS_KEPT = 4096


def human_bytes(value):
    """1536 -> '1.5 KiB'.

    >>> human_bytes(1536), human_bytes(None)
    ('1.5 KiB', '—')
    >>> from jinja2 import Undefined
    >>> human_bytes(Undefined(name="capacity_bytes"))  # a fact the node did not report
    '—'
    """
    if value is None or isinstance(value, Undefined):
        return "—"
    value = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def ago(moment):
    """A short 'how long ago' for a timestamp.

    >>> ago(None)
    'never'
    """
    if moment is None:
        return "never"
    seconds = int((datetime.now(timezone.utc) - moment).total_seconds())
    if seconds < 60:
        return f"{max(seconds, 0)} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def register(app):
    """Install the filters and make the status constants available to templates."""
    app.jinja_env.filters["bytes"] = human_bytes
    app.jinja_env.filters["ago"] = ago
    app.jinja_env.globals["status"] = status
    app.jinja_env.globals["url_for"] = link


def link(endpoint, **values):
    """url_for for templates, each path built once per worker: a page's header alone has a
    dozen links, 0.1 ms of a 3 ms page.

    A relative path is a function of the app, the script root, the endpoint and the values
    alone (Ferry has no subdomains, host rules or URL defaults), so the cache can never give
    another request's path. An external URL, an anchor, a method or a scheme, a relative
    endpoint (".index"), a value that cannot be hashed or a template rendered outside a request
    is built as before, every time.
    """
    if (endpoint.startswith(".") or any(key.startswith("_") for key in values)
            or not has_request_context()):
        return url_for(endpoint, **values)
    try:
        return _link((current_app._get_current_object(), request.script_root, endpoint,
                      tuple(sorted(values.items()))))
    except TypeError:  # a list or a dict among the values: not hashable
        return url_for(endpoint, **values)


@functools.lru_cache(maxsize=LINKS_KEPT)
def _link(key) -> str:
    _app, _root, endpoint, values = key
    return url_for(endpoint, **dict(values))


def render_fragment(template: str, **context) -> Markup:
    """render_template for a fragment that is a function of its context alone (no current_user,
    no clock, every value hashable): a context seen lately renders from a small cache.

    The key is the whole context (with the app and the script root its URLs are built from),
    not a version number of it: a change of any value the fragment shows renders it anew, so
    the cache can never show a stale state. It pays where a page is read again unchanged (the
    dashboard's 15 s poll, a list reloaded): rendering 50 rows was most of such a page's time.
    """
    return _rendered((current_app._get_current_object(), request.script_root, template,
                      tuple(sorted(context.items()))))


@functools.lru_cache(maxsize=FRAGMENTS_KEPT)
def _rendered(key) -> Markup:
    _app, _root, template, context = key
    return Markup(render_template(template, **dict(context)))

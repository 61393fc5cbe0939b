"""What every monitoring tool's parser shares: the normalized alert, the errors, the limits,
and the field readers that turn a bad value into a BadPayload with a message."""
import hashlib
import json
import math
from dataclasses import dataclass, field

from app.webhooks.sources.hosts import normalize_host

FIRING = "firing"
RESOLVED = "resolved"
DEFAULT_HOST_LABELS = ("instance", "host")

# Real payloads are a few KiB; Alertmanager's biggest groups stay well under
# this. Anything larger is refused before json.loads spends time on it.
MAX_BODY_BYTES = 1024 * 1024
# Stored and shown in the UI; longer text is cut, not refused.
MAX_NAME = 200
MAX_SUMMARY = 1000
# RFC 1035 limit for a DNS name; a longer "host" is not a host.
MAX_HOST = 253


class BadPayload(ValueError):
    """The body is not what the named source sends; the message says why."""


class UnknownSource(LookupError):
    """The source name is not one of SOURCES (a routing error, not a body error)."""


@dataclass(frozen=True)
class NormalizedAlert:
    """One alert about one host, whatever tool sent it."""

    source: str
    status: str  # FIRING or RESOLVED
    host: str | None  # port stripped; None when the payload names no host
    name: str
    summary: str
    dedup_key: str  # same key = same delivery; store it unique
    starts_at: str | None  # as the source wrote it (formats differ per tool)
    labels: dict = field(default_factory=dict)


def json_type(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def show(value):
    """A short, safe rendering of a bad value for an error message."""
    if isinstance(value, str):
        return json.dumps(cut(value, 40))
    if value is None or isinstance(value, (bool, int, float)) and not huge(value):
        return json.dumps(value)
    return json_type(value)


def huge(value):
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20


def cut(text, limit):
    return text if len(text) <= limit else text[: limit - 1] + "…"


def opt_str(obj, key, where):
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise BadPayload(f"{where}.{key} must be a string, got {json_type(value)}")


def scalar(obj, key, where, required=False):
    """A string or an integral number as text (Zabbix macros arrive as either); None if absent/empty."""
    value = obj.get(key)
    if isinstance(value, bool):
        raise BadPayload(f"{where}.{key} must be a string or a number, got a boolean")
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not huge(value):
        value = str(value)
    if isinstance(value, str):
        value = value.strip()
    if value is None or value == "":
        if required:
            raise BadPayload(f"{where}.{key} is required")
        return None
    if not isinstance(value, str):
        raise BadPayload(f"{where}.{key} must be a string or a number, got {show(value)}")
    return value


def label_map(value, where):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadPayload(f"{where} must be an object, got {json_type(value)}")
    for key, item in value.items():
        if not isinstance(item, str):
            raise BadPayload(f"{where}[{show(key)}] must be a string, got {json_type(item)}")
    return dict(value)


def host_or_bad(raw, what):
    host = normalize_host(raw)
    if host is not None and len(host) > MAX_HOST:
        raise BadPayload(f"{what} is longer than {MAX_HOST} characters")
    return host


def digest(parts):
    # ensure_ascii: JSON may carry lone surrogates that cannot be UTF-8 encoded.
    text = json.dumps(parts, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def key(source, *parts):
    # Fixed length whatever the inputs, so it fits a unique index.
    return f"{source}:{digest(list(parts))[:40]}"

"""Settings: defaults in code, site values in instance/config.py, FERRY_* overrides.

A bad value stops the app at start with a message naming the variable, so a
typo in a deployment never turns into a surprise at 3 a.m.
"""
import os

from app.errors import ConfigError

DEFAULT_SECRET_KEY = "dev-only-change-me"
MIN_SECRET_KEY_LENGTH = 32  # characters; anyone who guesses the key can sign an admin's session

DEFAULTS = {
    "SECRET_KEY": DEFAULT_SECRET_KEY,
    "SQLALCHEMY_DATABASE_URI": None,  # None: SQLite file in the instance folder
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "LOG_FORMAT": "text",  # or "json": one object per line, with task, group, server and node
    "SYNC_INTERVAL": 300,  # seconds between scheduled inventory syncs; 0 turns it off
    "SSH_TIMEOUT": 10,  # seconds to connect to a compute resource
    "COMMAND_TIMEOUT": 60,  # seconds for one inventory command on a node
    "JOB_TIMEOUT": 600,  # RQ job timeout for ordinary jobs (migrations set their own)
    "BACKUP_DIR": "/var/lib/ferry/backups",  # default temporary backup directory on nodes
    "QUEUE": "ferry",
    "LIBVIRT_TRANSPORT": "libssh2",
    # libvirt's dirty-rate calculation right before a migration corrupted TCG guests in
    # the lab (kernel panic on the destination): off by default, on for KVM sites.
    "SAMPLE_DIRTY_RATE": False,
    "MAX_PARALLEL_GROUPS": 3,  # migration groups running at once; one more fails at start
    "TASKS_PER_RESOURCE": 1,  # migration tasks a compute resource takes part in at once
    "DOWNTIME_TARGET_MS": 300,  # the ladder raises allowed downtime up to this
    "PROGRESS_TIMEOUT": 150,  # seconds without progress before a live migration is aborted
    "COMPLETION_TIMEOUT_PER_GIB": 150,  # seconds per GiB of data before it is aborted
    # A preflight younger than this (seconds) whose nodes have not changed since stands in
    # for a fresh one (the dialog's Check, then Start); 0 always asks the nodes again.
    "PREFLIGHT_REUSE_S": 10,
    # Throughput of finished moves between two nodes younger than this (seconds) replaces the
    # preflight's link probe; 0 always probes.
    "THROUGHPUT_MAX_AGE": 3600,
    "ORPHAN_AFTER": 30,  # seconds without heartbeat after which a running task is reconciled  # libssh2 or libssh: both verify the pinned key
    # Seconds a task's or group's owner may go silent before another may take it over
    # (services.lease); 0: ORPHAN_AFTER, so that one setting says how soon recovery steps in.
    "LEASE_TTL": 0,
    "NODE_WAIT_TIMEOUT": 3600,  # seconds a task waits for a busy node before it fails, unmoved
    # Disk and memory streams between nodes: "tls" (required: preflight fails without valid
    # certificates), "plain", or "auto" (TLS where both nodes hold valid ones: `pki issue`).
    "TRANSFER_SECURITY": "auto",
    "TLS_NBD_DIR": "/etc/ferry/pki/nbd",  # qemu-nbd / qemu-img credentials on each node
    "TLS_MIGRATION_DIR": "/etc/pki/qemu",  # qemu.conf migrate_tls_x509_cert_dir on each node
    # None: the session cookie is Secure when the request came over HTTPS (as ProxyFix sees it);
    # True for a proxy that terminates TLS but sends no X-Forwarded-Proto.
    "SESSION_COOKIE_SECURE": None,
    "SESSION_COOKIE_SAMESITE": "Lax",
    "TRUSTED_PROXIES": 0,  # reverse proxies in front whose X-Forwarded-* headers are believed
    "MAX_CONTENT_LENGTH": 1024 * 1024,  # bytes of a request body on every route
    "LOGIN_MAX_FAILURES_PER_ACCOUNT": 10,  # failed sign-ins in LOGIN_FAILURE_WINDOW, then 429
    "LOGIN_MAX_FAILURES_PER_ADDRESS": 30,
    "LOGIN_FAILURE_WINDOW": 900,  # seconds
}


def _to_int(name, raw):
    """Parse a non-negative integer or raise a ConfigError naming the variable."""
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < 0:
        raise ConfigError(f"{name}={raw!r} must not be negative")
    return value


def _to_url(schemes):
    """Build a parser that accepts only URLs with one of the given schemes."""
    def parse(name, raw):
        scheme = raw.split("://", 1)[0] if "://" in raw else ""
        if not any(scheme == s or scheme.startswith(s + "+") for s in schemes):
            raise ConfigError(f"{name}={raw!r} must be a URL starting with one of: "
                              + ", ".join(s + "://" for s in schemes))
        return raw
    return parse


def _to_bool(name, raw):
    """Parse 1/0, true/false, yes/no, on/off or raise a ConfigError naming the variable."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} must be one of 1/0, true/false, yes/no, on/off")


def _to_str(name, raw):
    """Accept any non-empty string."""
    if not raw.strip():
        raise ConfigError(f"{name} is set but empty")
    return raw


def _to_choice(*choices):
    """Build a parser that accepts only one of `choices`."""
    def parse(name, raw):
        if raw not in choices:
            raise ConfigError(f"{name}={raw!r} must be one of: {', '.join(choices)}")
        return raw
    return parse


# FERRY_<NAME> environment variable -> (config key, parser)
ENVIRONMENT = {
    "FERRY_SECRET_KEY": ("SECRET_KEY", _to_str),
    "FERRY_DATABASE_URL": ("SQLALCHEMY_DATABASE_URI", _to_url(["sqlite", "postgresql"])),
    "FERRY_REDIS_URL": ("REDIS_URL", _to_url(["redis", "rediss", "unix"])),
    "FERRY_LOG_FORMAT": ("LOG_FORMAT", _to_choice("text", "json")),
    "FERRY_SYNC_INTERVAL": ("SYNC_INTERVAL", _to_int),
    "FERRY_SSH_TIMEOUT": ("SSH_TIMEOUT", _to_int),
    "FERRY_COMMAND_TIMEOUT": ("COMMAND_TIMEOUT", _to_int),
    "FERRY_JOB_TIMEOUT": ("JOB_TIMEOUT", _to_int),
    "FERRY_BACKUP_DIR": ("BACKUP_DIR", _to_str),
    "FERRY_LIBVIRT_TRANSPORT": ("LIBVIRT_TRANSPORT", _to_choice("libssh2", "libssh")),
    "FERRY_MAX_PARALLEL_GROUPS": ("MAX_PARALLEL_GROUPS", _to_int),
    "FERRY_SAMPLE_DIRTY_RATE": ("SAMPLE_DIRTY_RATE", _to_bool),
    "FERRY_TASKS_PER_RESOURCE": ("TASKS_PER_RESOURCE", _to_int),
    "FERRY_DOWNTIME_TARGET_MS": ("DOWNTIME_TARGET_MS", _to_int),
    "FERRY_PROGRESS_TIMEOUT": ("PROGRESS_TIMEOUT", _to_int),
    "FERRY_COMPLETION_TIMEOUT_PER_GIB": ("COMPLETION_TIMEOUT_PER_GIB", _to_int),
    "FERRY_ORPHAN_AFTER": ("ORPHAN_AFTER", _to_int),
    "FERRY_PREFLIGHT_REUSE_S": ("PREFLIGHT_REUSE_S", _to_int),
    "FERRY_THROUGHPUT_MAX_AGE": ("THROUGHPUT_MAX_AGE", _to_int),
    "FERRY_LEASE_TTL": ("LEASE_TTL", _to_int),
    "FERRY_NODE_WAIT_TIMEOUT": ("NODE_WAIT_TIMEOUT", _to_int),
    "FERRY_TRANSFER_SECURITY": ("TRANSFER_SECURITY", _to_choice("auto", "tls", "plain")),
    "FERRY_TLS_NBD_DIR": ("TLS_NBD_DIR", _to_str),
    "FERRY_TLS_MIGRATION_DIR": ("TLS_MIGRATION_DIR", _to_str),
    "FERRY_SESSION_COOKIE_SECURE": ("SESSION_COOKIE_SECURE", _to_bool),
    "FERRY_TRUSTED_PROXIES": ("TRUSTED_PROXIES", _to_int),
    "FERRY_MAX_CONTENT_LENGTH": ("MAX_CONTENT_LENGTH", _to_int),
    "FERRY_LOGIN_MAX_FAILURES_PER_ACCOUNT": ("LOGIN_MAX_FAILURES_PER_ACCOUNT", _to_int),
    "FERRY_LOGIN_MAX_FAILURES_PER_ADDRESS": ("LOGIN_MAX_FAILURES_PER_ADDRESS", _to_int),
    "FERRY_LOGIN_FAILURE_WINDOW": ("LOGIN_FAILURE_WINDOW", _to_int),
}


def load(app, test_config=None, environ=None):
    """Fill app.config from defaults, instance/config.py, the environment, then test_config."""
    environ = os.environ if environ is None else environ
    app.config.from_mapping(DEFAULTS)
    if test_config is None:
        app.config.from_pyfile("config.py", silent=True)
        for variable, (key, parse) in ENVIRONMENT.items():
            if variable in environ:
                app.config[key] = parse(variable, environ[variable])
    else:
        app.config.from_mapping(test_config)
    if not app.config["SQLALCHEMY_DATABASE_URI"]:
        path = os.path.join(app.instance_path, "ferry.sqlite")
        app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///" + path
    app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"pool_pre_ping": True})
    # htmx sends the token in a header; a long-lived dashboard tab must not expire it.
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)
    # The auth guard checks CSRF itself, after it knows whether an API token signed the request.
    app.config.setdefault("WTF_CSRF_CHECK_DEFAULT", False)
    if not (app.config.get("DEBUG") or app.config.get("TESTING")):
        check_secret_key(app.config["SECRET_KEY"])


def check_secret_key(key):
    """Refuse the public default or a short key: whoever knows it can sign an admin's session."""
    hint = ("set FERRY_SECRET_KEY (or SECRET_KEY in instance/config.py) to a random value, "
            'e.g. python3 -c "import secrets; print(secrets.token_urlsafe(48))"')
    if key == DEFAULT_SECRET_KEY:
        raise ConfigError(f"FERRY_SECRET_KEY is not set and the built-in default is public: {hint}")
    if not isinstance(key, (str, bytes)) or len(key) < MIN_SECRET_KEY_LENGTH:
        raise ConfigError(f"FERRY_SECRET_KEY is shorter than {MIN_SECRET_KEY_LENGTH} characters: {hint}")

"""Failed sign-ins counted per account and per client address in Redis, in a fixed window.

After LOGIN_MAX_FAILURES_PER_ACCOUNT failures for one username, or
LOGIN_MAX_FAILURES_PER_ADDRESS from one address, within LOGIN_FAILURE_WINDOW
seconds, the login answers 429 without looking at the password. A success
clears the account's count, never the address's: one valid account must not
let its holder reset the count while guessing another's password.

When Redis does not answer, sign-in still works (logged): a Redis outage must
not lock every operator out of the pages they need to see what is happening.

redis is imported in the functions that talk to it: every page and CLI command loads this
module, and only a sign-in needs Redis (importing it cost a fifth of a second).
"""
import hashlib
import logging

from flask import current_app

from app.services.jobs import redis_connection

log = logging.getLogger("ferry.auth")
PREFIX = "ferry:login-failures"


def _keys(username, address):
    """Redis keys of the account's and the address's counts (usernames hashed: any length)."""
    account = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
    return f"{PREFIX}:account:{account}", f"{PREFIX}:address:{address or '-'}"


def retry_after(username, address):
    """Seconds until a sign-in may be tried again, or 0 when it may be tried now."""
    from redis.exceptions import RedisError

    account_key, address_key = _keys(username, address)
    config = current_app.config
    try:
        conn = redis_connection()
        waits = [conn.ttl(key) for key, limit in (
            (account_key, config["LOGIN_MAX_FAILURES_PER_ACCOUNT"]),
            (address_key, config["LOGIN_MAX_FAILURES_PER_ADDRESS"]))
            if limit and int(conn.get(key) or 0) >= limit]
    except RedisError as exc:
        log.error("login throttle unavailable (Redis): %s", type(exc).__name__)
        return 0
    return max([max(w, 1) for w in waits], default=0)


def record_failure(username, address):
    """Count one failed sign-in for the account and for the address."""
    from redis.exceptions import RedisError

    window = current_app.config["LOGIN_FAILURE_WINDOW"]
    try:
        pipe = redis_connection().pipeline()
        for key in _keys(username, address):
            pipe.set(key, 0, ex=window, nx=True)  # the window starts at the first failure
            pipe.incr(key)
        pipe.execute()
    except RedisError as exc:
        log.error("login throttle unavailable (Redis): %s", type(exc).__name__)


def clear_account(username):
    """Forget the account's failures after a successful sign-in."""
    from redis.exceptions import RedisError

    try:
        redis_connection().delete(_keys(username, None)[0])
    except RedisError as exc:
        log.error("login throttle unavailable (Redis): %s", type(exc).__name__)

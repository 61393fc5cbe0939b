"""The webhook's own checks of a delivery: the bearer token, the HMAC signature and the signed
timestamp's age (constant-time comparisons)."""
import hashlib
import hmac


def verify_bearer(header_value, expected_token):
    """True if an Authorization header carries `Bearer <expected_token>` (constant-time compare)."""
    if not expected_token or not isinstance(header_value, str):
        # An unset token must never mean "anyone may call".
        return False
    scheme, _, token = header_value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    # compare_digest on str refuses non-ASCII; bytes compare anything.
    return hmac.compare_digest(
        token.strip().encode("utf-8", "surrogatepass"),
        str(expected_token).encode("utf-8", "surrogatepass"),
    )


def verify_signature(secret, raw_body, header_value, timestamp=None):
    """True if `header_value` is the hex HMAC-SHA256 of the body (optional "sha256=" prefix; constant time).

    With Grafana's optional timestamp header the signed text is
    "<timestamp>:<body>"; pass that header's value as `timestamp`.
    """
    if not secret or not isinstance(header_value, str):
        return False
    if isinstance(secret, str):
        secret = secret.encode("utf-8", "surrogatepass")
    if isinstance(raw_body, str):
        raw_body = raw_body.encode("utf-8", "surrogatepass")
    if not isinstance(raw_body, (bytes, bytearray, memoryview)):
        return False
    message = bytes(raw_body)
    if timestamp is not None:
        message = str(timestamp).encode("utf-8", "surrogatepass") + b":" + message
    given = header_value.strip()
    if given[:7].lower() == "sha256=":
        given = given[7:]
    expected = hmac.new(bytes(secret), message, hashlib.sha256).hexdigest()
    return hmac.compare_digest(given.lower().encode("utf-8", "surrogatepass"), expected.encode())


def stale_timestamp(timestamp, now, max_age):
    """Why a signed Unix timestamp (seconds, as Grafana sends it) is refused; None if it is fresh.

    A captured delivery replayed later carries its old timestamp, and the signature
    covers it, so it cannot be renewed without the secret. A clock a little ahead is
    as wrong as one behind: both are bounded by `max_age`; 0 checks nothing.

    >>> stale_timestamp("1000", 1200, 300) is None
    True
    >>> stale_timestamp("1000", 1301, 300)
    'the signed timestamp is 301 s old; this source accepts at most 300 s'
    >>> stale_timestamp("2000", 1000, 300)
    'the signed timestamp is 1000 s in the future; this source accepts at most 300 s'
    >>> stale_timestamp("1e9", 1000, 300)
    'the signed timestamp is not a Unix time in seconds'
    >>> stale_timestamp("5", 10**9, 0) is None
    True
    """
    if not max_age:
        return None
    text = str(timestamp).strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 12):
        return "the signed timestamp is not a Unix time in seconds"
    age = int(now) - int(text)
    if abs(age) <= max_age:
        return None
    when = f"{age} s old" if age > 0 else f"{-age} s in the future"
    return f"the signed timestamp is {when}; this source accepts at most {max_age} s"

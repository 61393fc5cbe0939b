"""Which pooled database connections the web server asks "are you there?" before using them.

SQLAlchemy's pool_pre_ping asks on every checkout: one round trip more for every request,
the sixth of a dashboard's (0.2 ms of its 3 in-process, 5,000 servers on 200 nodes). The web
server asks only when a connection has rested in the pool longer than PING_AFTER_IDLE_S: what
kills a pooled connection (a restarted or failed-over database, an idle timeout, a firewall
forgetting the flow) is met first by a connection that has been resting, and one that carried
a request a moment ago is not asked again. A connection found dead is replaced before the
request uses it (the pool retries the checkout), as with pool_pre_ping.

What is given up: a database restarted in the very second after a connection's last use fails
the one request that takes it next (SQLAlchemy then drops every connection of the pool), where
the ping would have replaced it. The worker keeps pool_pre_ping: a job's step must not fail
where a ping would have saved it.

    dbping.ping_after_idle(engine)   # with pool_pre_ping off (app.create_app(serving=True))
"""
import time

from sqlalchemy import event, exc

PING_AFTER_IDLE_S = 1.0
_RESTED_SINCE = "ferry_rested_since"  # key in the pool's record of the connection


def ping_after_idle(engine, idle_s: float = PING_AFTER_IDLE_S) -> None:
    """Ping a connection of `engine`'s pool when it is checked out after resting over idle_s."""
    def rest(dbapi_connection, record, *_):
        record.info[_RESTED_SINCE] = time.monotonic()

    def check(dbapi_connection, record, proxy):
        if time.monotonic() - record.info.get(_RESTED_SINCE, float("-inf")) <= idle_s:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            # The pool invalidates this connection and checks out another.
            raise exc.DisconnectionError(f"a pooled connection did not answer: {error}") from error

    event.listen(engine, "connect", rest)  # a new connection has just answered
    event.listen(engine, "checkin", rest)
    event.listen(engine, "checkout", check)

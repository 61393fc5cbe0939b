"""The web server's pooled connections to PostgreSQL are pinged after resting, not on every
checkout (app.infra.dbping): a connection the database dropped while it rested is replaced
before a request uses it; one used a moment ago is not asked again. Real PostgreSQL."""
import importlib
import time

import pytest
from sqlalchemy import create_engine, exc, text

from app import create_app
from app.extensions import db
from app.infra import dbping
from tests.fixtures.app import _postgres_url

IDLE_S = 0.3


@pytest.fixture
def engine():
    """A pool of one connection to the test database, pinged after IDLE_S of rest."""
    engine = create_engine(_postgres_url(), pool_size=1, max_overflow=0)
    dbping.ping_after_idle(engine, idle_s=IDLE_S)
    yield engine
    engine.dispose()


def backend(engine):
    """The server process of the connection the pool gives out now."""
    conn = engine.connect()
    try:
        return conn.scalar(text("SELECT pg_backend_pid()"))
    except exc.DBAPIError:
        conn.rollback()  # as a request's teardown does
        raise
    finally:
        conn.close()


def drop(pid):
    """Have the database end backend `pid`, as a restart or an idle timeout would."""
    other = create_engine(_postgres_url(), poolclass=None)
    with other.connect() as conn:
        assert conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    other.dispose()
    time.sleep(0.1)  # the backend is gone once the signal is handled


def test_a_connection_dropped_while_it_rested_is_replaced_before_use(engine):
    first = backend(engine)
    drop(first)
    time.sleep(IDLE_S + 0.2)

    assert backend(engine) not in (first, None)  # the ping found it dead: a new one answered


def test_a_connection_used_a_moment_ago_is_not_pinged_again(engine):
    first = backend(engine)
    assert backend(engine) == first  # the same connection, reused within the rest
    drop(first)

    # Within IDLE_S nothing asks: the request that takes it fails (what is given up), the pool
    # drops it, and the next one gets a fresh connection.
    with pytest.raises(exc.OperationalError) as failed:
        backend(engine)
    assert failed.value.connection_invalidated
    assert backend(engine) != first


def test_a_transaction_on_a_dropped_connection_rolls_back(engine):
    # The claims' rollback listener (app.services.limits, on every engine) read the connection
    # of every rollback; on one the database had dropped, that read tried to reconnect inside
    # the failed transaction and the rollback itself raised PendingRollbackError: a request's
    # teardown or a job's clean-up after a database restart failed a second time.
    importlib.import_module("app.services.limits")  # registers the listener this is about
    conn = engine.connect()
    first = conn.scalar(text("SELECT pg_backend_pid()"))
    drop(first)
    with pytest.raises(exc.OperationalError) as dropped:
        conn.scalar(text("SELECT 1"))
    assert dropped.value.connection_invalidated

    conn.rollback()
    conn.close()

    assert backend(engine) != first  # and the pool hands out a working connection


def test_only_a_serving_app_pings_after_rest(tmp_path):
    served = create_app({"TESTING": True, "SECRET_KEY": "test", "INSTANCE_PATH": str(tmp_path),
                         "SQLALCHEMY_DATABASE_URI": _postgres_url()}, serving=True)
    plain = create_app({"TESTING": True, "SECRET_KEY": "test", "INSTANCE_PATH": str(tmp_path),
                        "SQLALCHEMY_DATABASE_URI": _postgres_url()})
    for app, pre_ping in ((served, False), (plain, True)):
        with app.app_context():
            assert db.engine.pool._pre_ping is pre_ping
            with db.engine.connect() as conn:
                assert conn.scalar(text("SELECT 1")) == 1
            db.engine.dispose()

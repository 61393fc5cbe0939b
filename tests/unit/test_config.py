"""Configuration: defaults, FERRY_* overrides, and a clear error on a bad value."""
import pytest

from app import create_app
from app.config import load
from app.errors import ConfigError


KEY = {"FERRY_SECRET_KEY": "k" * 40}  # outside TESTING the app refuses to start without one


class FakeApp:
    """Just enough of a Flask app for config.load (no instance/config.py)."""

    instance_path = "/nonexistent"

    def __init__(self):
        from flask import Config
        self.config = Config("/nonexistent")


def test_it_uses_sqlite_in_the_instance_folder_by_default():
    app = FakeApp()
    load(app, environ=KEY)
    assert app.config["SQLALCHEMY_DATABASE_URI"] == "sqlite:////nonexistent/ferry.sqlite"
    assert app.config["SYNC_INTERVAL"] == 300


def test_it_reads_ferry_environment_variables():
    app = FakeApp()
    load(app, environ={**KEY, "FERRY_DATABASE_URL": "postgresql+psycopg://u@h/db",
                       "FERRY_SYNC_INTERVAL": "60", "FERRY_REDIS_URL": "redis://r:6379/2"})
    assert app.config["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://u@h/db"
    assert app.config["SYNC_INTERVAL"] == 60
    assert app.config["REDIS_URL"] == "redis://r:6379/2"


@pytest.mark.parametrize("variable,value", [
    ("FERRY_SYNC_INTERVAL", "five"),
    ("FERRY_SYNC_INTERVAL", "-1"),
    ("FERRY_DATABASE_URL", "mysql://x/y"),
    ("FERRY_REDIS_URL", "http://localhost"),
    ("FERRY_LIBVIRT_TRANSPORT", "telnet"),
])
def test_it_refuses_a_bad_value_naming_the_variable(variable, value):
    with pytest.raises(ConfigError, match=variable):
        load(FakeApp(), environ={variable: value})


def test_it_stops_the_app_factory_on_a_bad_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FERRY_INSTANCE_PATH", str(tmp_path))
    monkeypatch.setenv("FERRY_SSH_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="FERRY_SSH_TIMEOUT"):
        create_app()


@pytest.mark.parametrize("environ", [{}, {"FERRY_SECRET_KEY": "dev-only-change-me"},
                                     {"FERRY_SECRET_KEY": "short-but-not-empty"}])
def test_it_refuses_the_default_or_a_short_secret_key(environ):
    with pytest.raises(ConfigError, match="FERRY_SECRET_KEY"):
        load(FakeApp(), environ=environ)


def test_it_refuses_the_default_key_from_the_app_factory(monkeypatch, tmp_path):
    monkeypatch.setenv("FERRY_INSTANCE_PATH", str(tmp_path))
    monkeypatch.delenv("FERRY_SECRET_KEY", raising=False)
    with pytest.raises(ConfigError, match="FERRY_SECRET_KEY"):
        create_app()


def test_it_accepts_the_default_key_when_testing_or_debugging():
    for flag in ("TESTING", "DEBUG"):
        app = FakeApp()
        load(app, test_config={flag: True}, environ={})
        assert app.config["SECRET_KEY"] == "dev-only-change-me"


def test_it_reads_the_proxy_cookie_and_size_settings():
    app = FakeApp()
    load(app, environ={**KEY, "FERRY_TRUSTED_PROXIES": "1", "FERRY_SESSION_COOKIE_SECURE": "on",
                       "FERRY_MAX_CONTENT_LENGTH": "2048"})
    assert (app.config["TRUSTED_PROXIES"], app.config["SESSION_COOKIE_SECURE"],
            app.config["MAX_CONTENT_LENGTH"]) == (1, True, 2048)

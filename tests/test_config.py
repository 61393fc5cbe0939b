"""Configuration: defaults, FERRY_* overrides, and a clear error on a bad value."""
import pytest

from app import create_app
from app.config import load
from app.errors import ConfigError


class FakeApp:
    """Just enough of a Flask app for config.load (no instance/config.py)."""

    instance_path = "/nonexistent"

    def __init__(self):
        from flask import Config
        self.config = Config("/nonexistent")


def test_it_uses_sqlite_in_the_instance_folder_by_default():
    app = FakeApp()
    load(app, environ={})
    assert app.config["SQLALCHEMY_DATABASE_URI"] == "sqlite:////nonexistent/ferry.sqlite"
    assert app.config["SYNC_INTERVAL"] == 300


def test_it_reads_ferry_environment_variables():
    app = FakeApp()
    load(app, environ={"FERRY_DATABASE_URL": "postgresql+psycopg://u@h/db",
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

"""Structured logs: one JSON object per line with FERRY_LOG_FORMAT=json (the task, group, server
and node of log_context on every line), plain text otherwise, a bad value refused at start.

The entry points run as real processes (`python -m worker`, `flask --app wsgi`), against the
test PostgreSQL database and Redis db.
"""
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from flask import Flask

from app import config
from app.errors import ConfigError
from app.observability.logs import ContextFilter, JsonFormatter, current_context, log_context
from tests.fixtures.app import TEST_REDIS_URL, _postgres_url, _reset_postgres, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def lines():
    """A logger writing JSON lines into a list (root's handlers, pytest's included, untouched)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("ferry.test-logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield logger, lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)


def test_it_puts_task_group_server_and_node_on_every_line_inside_a_context(lines):
    log, read = lines
    with log_context(task=12, group=4, server="web-1", node="node1"):
        log.info("copying %d disks", 2)
        with log_context(node="node2", phase="switch-over"):
            log.warning("on the destination")
        log.info("back")
    log.info("outside")

    first, inner, back, outside = read()
    assert first["message"] == "copying 2 disks" and first["level"] == "INFO"
    assert (first["task"], first["group"], first["server"], first["node"]) == (12, 4, "web-1", "node1")
    assert inner["node"] == "node2" and inner["phase"] == "switch-over" and inner["task"] == 12
    assert back["node"] == "node1" and "phase" not in back
    assert outside["task"] is None and outside["node"] is None and outside["logger"] == "ferry.test-logs"


def test_it_keeps_contexts_of_threads_apart(lines):
    log, read = lines
    ready = threading.Barrier(2)

    def run(task):
        with log_context(task=task):
            ready.wait(timeout=10)
            log.info("in %s", task)

    threads = [threading.Thread(target=run, args=(n,)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted((line["message"], line["task"]) for line in read()) == [("in 1", 1), ("in 2", 2)]
    assert current_context() == {}


def test_it_keeps_the_traceback_of_an_exception_in_the_same_object(lines):
    log, read = lines
    try:
        raise RuntimeError("libvirt said no")
    except RuntimeError:
        log.exception("step failed")
    (line,) = read()
    assert "RuntimeError: libvirt said no" in line["exception"] and line["level"] == "ERROR"


def test_it_refuses_a_bad_format_naming_the_variable():
    app = Flask(__name__)
    with pytest.raises(ConfigError, match="FERRY_LOG_FORMAT='yaml' must be one of: text, json"):
        config.load(app, environ={"FERRY_LOG_FORMAT": "yaml"})
    config.load(app, environ={"FERRY_LOG_FORMAT": "json", "FERRY_SECRET_KEY": "k" * 40})
    assert app.config["LOG_FORMAT"] == "json"


# --- the real entry points ----------------------------------------------------------------


@pytest.fixture
def environ(tmp_path):
    """The environment of a Ferry process on the test PostgreSQL database and Redis db."""
    url = _postgres_url()
    _reset_postgres(url)
    return dict(os.environ, FERRY_DATABASE_URL=url, FERRY_REDIS_URL=TEST_REDIS_URL,
                FERRY_INSTANCE_PATH=str(tmp_path / "instance"), FERRY_SECRET_KEY="k" * 40)


def run(argv, env):
    """Run a Ferry entry point; returns the finished process (stdout and stderr as text)."""
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


def test_it_makes_every_line_of_the_worker_json(environ, redis_conn):
    done = run([sys.executable, "-m", "worker", "--burst", "--no-schedule"],
               dict(environ, FERRY_LOG_FORMAT="json"))

    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (done.stdout + done.stderr).splitlines() if line]
    loggers = {line["logger"] for line in lines}
    assert {"alembic.runtime.migration", "rq.worker"} <= loggers, loggers
    assert all({"time", "level", "message", "task", "group", "server", "node"} <= set(line)
               for line in lines)


def test_it_logs_the_web_apps_lines_as_json_with_their_context(environ):
    script = ("import logging, wsgi\n"
              "from app.observability.logs import log_context\n"
              "with log_context(task=7, group=3, server='web', node='node1'):\n"
              "    logging.getLogger('ferry.live').info('switch-over')\n")
    done = run([sys.executable, "-c", script], dict(environ, FERRY_LOG_FORMAT="json"))

    assert done.returncode == 0, done.stderr
    (line,) = [json.loads(line) for line in done.stderr.splitlines()]
    assert line["message"] == "switch-over" and line["logger"] == "ferry.live"
    assert (line["task"], line["group"], line["server"], line["node"]) == (7, 3, "web", "node1")


def test_it_logs_plain_text_by_default(environ):
    # What the container's entrypoint runs first.
    done = run([sys.executable, "-c",
                "import wsgi; from app import upgrade_database; upgrade_database(wsgi.app)"],
               environ)

    assert done.returncode == 0, done.stderr
    assert "alembic.runtime.migration INFO Running upgrade" in done.stderr
    assert not done.stderr.lstrip().startswith("{")


def test_it_stops_the_worker_at_start_on_a_bad_format(environ):
    done = run([sys.executable, "-m", "worker", "--burst"], dict(environ, FERRY_LOG_FORMAT="yaml"))

    assert done.returncode != 0
    assert "FERRY_LOG_FORMAT='yaml' must be one of: text, json" in done.stderr


def test_it_makes_gunicorns_own_lines_json_too(environ, redis_conn, tmp_path):
    port = free_port()
    out, err = open(tmp_path / "out", "w+"), open(tmp_path / "err", "w+")
    web = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "gunicorn"), "--bind", f"127.0.0.1:{port}",
         "--workers", "1", "--access-logfile", "-",
         "--logger-class", "app.observability.gunicorn_logger.GunicornLogger", "wsgi:app"],
        cwd=ROOT, env=dict(environ, FERRY_LOG_FORMAT="json"), stdout=out, stderr=err)
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("gunicorn did not answer")
    finally:
        web.terminate()
        web.wait(timeout=30)
    out.seek(0)
    err.seek(0)
    lines = [json.loads(line) for line in (out.read() + err.read()).splitlines() if line]
    by_logger = {line["logger"] for line in lines}
    assert {"gunicorn.error", "gunicorn.access"} <= by_logger, by_logger
    assert any("/healthz" in line["message"] for line in lines if line["logger"] == "gunicorn.access")

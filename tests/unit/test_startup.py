"""Start-up cost: what `import wsgi` (every CLI command, every web worker) loads, and what it
leaves to the commands that need it. Checked by name, not by time (the bench times it)."""
import os
import subprocess
import sys

from bench import ROOT

# Heavy modules only some commands use: importing them at start-up cost most of the 1.4 s a
# bare `flask --app wsgi resources list` took (alembic alone 0.45 s), and later a third of the
# 0.9 s CPU it still took (redis and its cryptography 0.2 s, the engine's runners with libvirt,
# the certificates' cryptography, prometheus_client). The pages and commands that need them
# import the services that load them where they use them. Of Ferry's own modules, the typed
# blobs (a score of dataclasses, read by migration pages and jobs, and by the OpenAPI document's
# schemas) and the preflight's stored-facts checks (the migrate dialog's) wait likewise.
NOT_AT_START = ("alembic", "flask_migrate", "paramiko", "fabric", "invoke", "rq", "libvirt",
                "redis", "cryptography", "prometheus_client", "app.services.migration",
                "app.services.engine", "app.services.inventory", "app.services.evacuation",
                "app.blobs", "app.api.openapi", "app.services.preflight_checks")


def environment(tmp_path):
    """An app configured for tmp_path (its own SQLite file and instance folder)."""
    return dict(os.environ, FERRY_SECRET_KEY="test-startup-" + "x" * 40,
                FERRY_INSTANCE_PATH=str(tmp_path),
                FERRY_DATABASE_URL=f"sqlite:///{tmp_path / 'ferry.sqlite'}")


def flask_cli(tmp_path, *argv):
    """Run `flask --app wsgi ARGV` in the project."""
    flask = os.path.join(os.path.dirname(sys.executable), "flask")
    return subprocess.run([flask, "--app", "wsgi", *argv], cwd=ROOT, env=environment(tmp_path),
                          capture_output=True, text=True, timeout=120)


def test_it_starts_the_app_without_the_modules_only_some_commands_use(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import sys, wsgi; print(' '.join(sys.modules))"],
                          cwd=ROOT, env=environment(tmp_path), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split())
    assert "app.models" in loaded  # the app really was built
    assert not [m for m in NOT_AT_START if m in loaded]


def test_it_still_offers_the_schema_commands_and_upgrades_the_schema(tmp_path):
    listed = flask_cli(tmp_path, "db", "--help")
    assert listed.returncode == 0 and "upgrade" in listed.stdout, listed.stderr
    upgraded = flask_cli(tmp_path, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    current = flask_cli(tmp_path, "db", "current")
    assert "(head)" in current.stdout, current.stdout + current.stderr
    assert flask_cli(tmp_path, "resources", "list").returncode == 0


def test_it_lists_the_compute_resources_without_the_modules_only_some_commands_use(tmp_path):
    assert flask_cli(tmp_path, "db", "upgrade").returncode == 0
    proc, loaded, _ = loaded_by(tmp_path, "resources", "list")  # (defined below)
    assert proc.returncode == 0, proc.stderr
    assert "app.models" in loaded and "app.cli.inventory" in loaded
    assert not [m for m in NOT_AT_START if m in loaded]


def test_it_builds_the_app_with_the_collector_resting_then_freezes_what_it_built(tmp_path):
    """wsgi keeps the cyclic collector out of start-up (the bench's CLI figure) and leaves
    it running afterwards, with the app's objects frozen out of its sweeps."""
    proc = subprocess.run([sys.executable, "-c",
                           "import gc, wsgi; print(gc.isenabled(), gc.get_freeze_count())"],
                          cwd=ROOT, env=environment(tmp_path), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    enabled, frozen = proc.stdout.split()
    assert enabled == "True" and int(frozen) > 10_000


def test_the_migration_service_leaves_the_engine_to_the_process_that_runs_a_task(tmp_path):
    # `migrate` (preflight and start) and the web's dialog import app.services.migration; the
    # engine that moves a server (live, offline and their libvirt calls) is the worker's.
    proc = subprocess.run([sys.executable, "-c", "import sys, wsgi, app.services.migration; "
                           "print(' '.join(sys.modules))"], cwd=ROOT,
                          env=environment(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split())
    assert "app.services.migration" in loaded
    assert not loaded & {"app.services.engine", "app.services.live", "app.services.offline",
                         "libvirt"}


# The pages' and the API's modules, and their URL rules (werkzeug compiles each one): a
# command that serves no request leaves them out (wsgi.serves_pages). `--help` and `db` too.
PAGE_MODULES = ("app.api.views", "app.dashboard.views", "app.servers.views",
                "app.webhooks.views", "app.migrations.views")


def loaded_by(tmp_path, *argv):
    """`flask --app wsgi ARGV` in a process that says, on its last stderr line, what it
    loaded and which URL rules the app has."""
    script = ("import atexit, sys\n"
              "def report():\n"
              "    import wsgi\n"
              "    rules = ' '.join(r.rule for r in wsgi.app.url_map.iter_rules())\n"
              "    print('LOADED', ' '.join(sys.modules), 'RULES', rules, file=sys.stderr)\n"
              "atexit.register(report)\n"
              "from flask.cli import main\n"
              f"sys.argv = ['flask', '--app', 'wsgi', *{list(argv)!r}]\n"
              "main()\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environment(tmp_path),
                          capture_output=True, text=True, timeout=120)
    loaded, rules = proc.stderr.rsplit("LOADED", 1)[1].split("RULES")
    return proc, set(loaded.split()), set(rules.split())


def test_a_command_that_serves_no_request_builds_the_app_without_its_pages(tmp_path):
    assert flask_cli(tmp_path, "db", "upgrade").returncode == 0
    proc, loaded, rules = loaded_by(tmp_path, "resources", "list")
    assert proc.returncode == 0, proc.stderr
    assert "app.cli.inventory" in loaded
    assert not [m for m in PAGE_MODULES if m in loaded]
    assert rules == {"/static/<path:filename>"}


def test_the_page_commands_and_every_other_importer_get_the_whole_app(tmp_path):
    proc, loaded, rules = loaded_by(tmp_path, "routes")
    assert proc.returncode == 0, proc.stderr
    assert any(r.startswith("/api/") for r in rules) and any(r.startswith("/hooks/")
                                                             for r in rules), rules
    assert all(m in loaded for m in PAGE_MODULES)
    imported = subprocess.run([sys.executable, "-c", "import wsgi; print(len(list("
                               "wsgi.app.url_map.iter_rules())))"], cwd=ROOT,
                              env=environment(tmp_path), capture_output=True, text=True,
                              timeout=120)
    assert int(imported.stdout) > 50, imported.stderr  # gunicorn's `wsgi:app` is whole too


def test_it_tells_a_page_command_from_the_others():
    import doctest

    import app
    runner = doctest.DocTestRunner()
    for example in doctest.DocTestFinder().find(app.serves_pages, "serves_pages",
                                                globs={"serves_pages": app.serves_pages}):
        runner.run(example)
    assert (runner.tries, runner.failures) == (3, 0)
    assert app.serves_pages(["/usr/lib/python3/dist-packages/flask/__main__.py", "run"])
    assert not app.serves_pages(["/x/.venv/lib/python3.11/site-packages/flask/__main__.py",
                                 "--app", "wsgi", "migrate", "web-1", "--to", "node2"])
    assert app.serves_pages(["-c"])
    assert not app.serves_pages(["flask", "--app", "wsgi", "--help"])

"""Start-up cost: what `import wsgi` (every CLI command, every web worker) loads, and what it
leaves to the commands that need it. Checked by name, not by time (the bench times it)."""
import os
import subprocess
import sys

from bench import ROOT

# Heavy modules only some commands use: importing them at start-up cost most of the 1.4 s a
# bare `flask --app wsgi resources list` took (alembic alone 0.45 s). libvirt (about 0.03 s) is
# not in the list: services.migration imports the engine's runners, whose infra modules import
# it at the top.
NOT_AT_START = ("alembic", "flask_migrate", "paramiko", "fabric", "invoke", "rq")


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

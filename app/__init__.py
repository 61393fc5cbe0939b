"""Ferry: move virtual servers between compute resources. The Flask application factory."""
import os

from flask import Flask, render_template, request

from app import config

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MIGRATIONS = os.path.join(HERE, "db_migrations")

# The `flask` commands that serve or show the pages; any other (`resources list`, `migrate`,
# `db upgrade`, `--help`) builds the app without them (create_app(pages=False)).
PAGE_COMMANDS = frozenset({"run", "routes", "shell"})


def serves_pages(argv) -> bool:
    """False only for a command of the `flask` command line that is not a page command: a
    server (gunicorn), `python -c` or any other importer gets the whole app.

    >>> serves_pages(["/srv/ferry/.venv/bin/flask", "--app", "wsgi", "resources", "list"])
    False
    >>> serves_pages(["flask", "--app", "wsgi", "run", "--port", "8080"])
    True
    >>> serves_pages(["/srv/ferry/.venv/bin/gunicorn", "wsgi:app"])
    True
    """
    program = argv[0] if argv else ""
    if os.path.basename(program) != "flask" and \
            not program.endswith(os.path.join("flask", "__main__.py")):
        return True
    return bool(PAGE_COMMANDS.intersection(argv[1:]))


def create_app(test_config=None, pages=True, serving=False):
    """Build the app: config, extensions, blueprints, CLI commands.

    pages=False leaves out the pages and the API (their blueprints, their modules and the 62
    URL rules werkzeug compiles one by one): a command of the `flask` command line that
    serves no request does not pay for them (see serves_pages). serving=True: the app of a
    web server, whose pooled database connections are pinged only after resting (dbping)."""
    app = Flask(
        __name__,
        instance_relative_config=True,
        instance_path=((test_config or {}).get("INSTANCE_PATH")
                       or os.environ.get("FERRY_INSTANCE_PATH") or os.path.join(ROOT, "instance")),
        template_folder=os.path.join(ROOT, "templates"),
        static_folder=os.path.join(ROOT, "static"),
    )
    os.makedirs(app.instance_path, exist_ok=True)
    config.load(app, test_config)
    from app import security
    security.register(app)  # ProxyFix, session cookie, security headers on every response

    from app.extensions import csrf, db, login_manager
    if serving:
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {
            **app.config["SQLALCHEMY_ENGINE_OPTIONS"], "pool_pre_ping": False}
    db.init_app(app)
    if serving:
        from app.infra import dbping
        with app.app_context():
            for engine in db.engines.values():
                dbping.ping_after_idle(engine)
    app.before_request(read_without_a_transaction)  # before the guard loads the user
    from app.schema import schema_cli
    app.cli.add_command(schema_cli)  # `flask db`: alembic is imported only when it runs
    csrf.init_app(app)
    login_manager.init_app(app)

    if pages:
        register_pages(app)
    from app import cli
    cli.register(app)

    from app import templating
    templating.register(app)

    @app.errorhandler(403)
    def forbidden(error):
        """A person without the role sees why, not a blank page."""
        return render_template("errors/403.html"), 403

    return app


def register_pages(app):
    """Every page, the API and the webhooks' endpoints."""
    from app import (api, auth, dashboard, evacuations, jobs, matrix, migrations,
                     observability, resources, servers)
    from app.webhooks import events as webhook_events
    from app.webhooks import views as hooks
    for page in (auth, dashboard, resources, servers, jobs, api, hooks, observability,
                 migrations, matrix, evacuations, webhook_events):
        app.register_blueprint(page.bp)


def read_without_a_transaction():
    """A page read (GET or HEAD) runs its queries in autocommit, like Django's default: no
    BEGIN and ROLLBACK round trips around them, two of a dashboard's seven. What it reads is
    unchanged (under READ COMMITTED every statement already takes its own snapshot); a read
    that writes (an API token's last use) commits that statement at once."""
    if request.method in ("GET", "HEAD") and request.endpoint != "static":
        from sqlalchemy.exc import SQLAlchemyError

        from app.extensions import db
        try:
            db.session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        except SQLAlchemyError:  # a database that does not answer is the view's to report
            db.session.rollback()  # (/healthz and /metrics answer 503)


def upgrade_database(app):
    """Bring the schema to the newest revision (run at start by the worker and the entrypoint)."""
    from flask_migrate import upgrade

    from app.schema import init_migrations
    init_migrations(app, MIGRATIONS)
    with app.app_context():
        upgrade(directory=MIGRATIONS)

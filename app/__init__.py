"""Ferry: move virtual servers between compute resources. The Flask application factory."""
import os

from flask import Flask, render_template

from app import config

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MIGRATIONS = os.path.join(HERE, "db_migrations")


def create_app(test_config=None):
    """Build the app: config, extensions, blueprints, CLI commands."""
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
    db.init_app(app)
    from app.schema import schema_cli
    app.cli.add_command(schema_cli)  # `flask db`: alembic is imported only when it runs
    csrf.init_app(app)
    login_manager.init_app(app)

    from app import auth, cli, dashboard, jobs, resources, servers
    app.register_blueprint(auth.bp)
    app.register_blueprint(dashboard.bp)
    app.register_blueprint(resources.bp)
    app.register_blueprint(servers.bp)
    app.register_blueprint(jobs.bp)
    from app import api, observability
    from app.webhooks import views as hooks
    app.register_blueprint(api.bp)
    app.register_blueprint(hooks.bp)
    app.register_blueprint(observability.bp)
    from app import evacuations, matrix, migrations, webhook_events
    app.register_blueprint(migrations.bp)
    app.register_blueprint(matrix.bp)
    app.register_blueprint(evacuations.bp)
    app.register_blueprint(webhook_events.bp)
    cli.register(app)

    from app import templating
    templating.register(app)

    @app.errorhandler(403)
    def forbidden(error):
        """A person without the role sees why, not a blank page."""
        return render_template("errors/403.html"), 403

    return app


def upgrade_database(app):
    """Bring the schema to the newest revision (run at start by the worker and the entrypoint)."""
    from flask_migrate import upgrade

    from app.schema import init_migrations
    init_migrations(app, MIGRATIONS)
    with app.app_context():
        upgrade(directory=MIGRATIONS)

"""The schema's migrations (Flask-Migrate on alembic), loaded only when they are used.

Importing alembic costs more than all the rest of a CLI command (about 0.45 s of the 1.4 s
`import wsgi` took), and only `flask db ...` and `upgrade_database` need it: `flask db` is a
group that looks up the real Flask-Migrate group the first time one of its commands is asked
for, and `init_migrations` attaches Flask-Migrate to the app then.
"""
import click
from flask import current_app

from app.extensions import db


def init_migrations(app, directory):
    """Attach Flask-Migrate to app (once); its `db` group replaces the lazy one below."""
    if "migrate" not in app.extensions:
        from flask_migrate import Migrate
        Migrate(app, db, directory=directory)


class LazySchemaGroup(click.Group):
    """`flask db`: Flask-Migrate's own group, imported when a `db` command is looked up."""

    def _real(self):
        from flask_migrate.cli import db as group

        from app import MIGRATIONS
        init_migrations(current_app._get_current_object(), MIGRATIONS)
        return group

    # Parsing, running and listing are the real group's: its options (-d, -x) and the callback
    # that records them for its commands included.
    def make_context(self, info_name, args, parent=None, **extra):
        """The real group's context for `flask db ARGS`."""
        return self._real().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        """Run what the real group parsed."""
        return self._real().invoke(ctx)

    def list_commands(self, ctx):
        """The real group's commands."""
        return self._real().list_commands(ctx)

    def get_command(self, ctx, name):
        """The real group's command `name`."""
        return self._real().get_command(ctx, name)


schema_cli = LazySchemaGroup("db", help="Schema migrations (Flask-Migrate): upgrade, current, "
                                        "history, migrate ...")

"""`flask --app wsgi ...`: Ferry's command line, one module per command group.

    inventory.py  resources, ip-blocks, sync      users.py  users (tokens.py: their API tokens)
    pki.py        pki init|issue                  hooks.py  monitoring webhook sources
    migrate.py    migrate SERVER... --to NODE     evacuate.py  evacuate NODE

Every `flask` invocation (and every web worker) imports this package, so what only one
command needs is imported inside that command (rq, for instance): tests/unit/test_startup.py
checks that start-up leaves those modules out. `flask db` is app/schema.py's, lazier still.
"""
import click


def fail(exc):
    """Turn a FerryError into a clean CLI error (exit code 1, no traceback)."""
    raise click.ClickException(str(exc))


def register(app):
    """Attach the command groups to the app's CLI."""
    from app.cli.evacuate import evacuate_command
    from app.cli.hooks import hooks_cli
    from app.cli.inventory import ipblocks_cli, resources_cli, sync_command
    from app.cli.migrate import migrate_command
    from app.cli.pki import pki_cli
    from app.cli.tokens import revoke_token_command, token_command, tokens_command
    from app.cli.users import users_cli
    for command in (token_command, tokens_command, revoke_token_command):
        users_cli.add_command(command)
    for command in (resources_cli, ipblocks_cli, users_cli, pki_cli, hooks_cli, sync_command,
                    migrate_command, evacuate_command):
        app.cli.add_command(command)

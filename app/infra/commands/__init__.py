"""Every command Ferry sends to a compute node is built in this package.

Commands are argument lists (or strings built with shlex.quote from such lists):
never a user's string pasted into a shell line. `node` holds inventory and
connectivity commands, `storage` the disk copy and conversion commands.
"""

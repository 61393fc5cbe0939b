"""The errors Ferry knows how to explain to a person."""


class FerryError(Exception):
    """A failure Ferry expected and can describe: a job ends `failed`, not `errored`."""


class ConfigError(FerryError):
    """A setting has a value Ferry cannot use; the message names the variable."""


class NotFound(FerryError):
    """The thing asked for does not exist."""


class UnexpectedAnswer(FerryError):
    """A node answered with something Ferry will not guess about (its output is untrusted input)."""

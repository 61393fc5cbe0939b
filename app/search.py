"""Filtering lists by what a person types: the servers list and the matrix share it."""


def like_pattern(text):
    """A LIKE pattern (escape character a backslash) that matches text literally anywhere in a
    name."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"

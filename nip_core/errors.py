"""The project's own error types.

Every problem caused by what a user supplied (a file, a parameter, a name) is raised as an
:class:`InputError` whose message is one readable sentence. The CLI turns it into exit status 2
and the app into an in-page message; anything else is a bug.
"""
from __future__ import annotations


class InputError(ValueError):
    """A user-supplied value or file that the engine refuses, with a one-line reason."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))

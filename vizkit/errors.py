"""The one exception type a user sees: CLIs turn it into one line on stderr and exit code 2."""


class VizkitError(Exception):
    """A problem with the user's input: the message names it and says what to do."""


def fail(message: str) -> None:
    """Raise a VizkitError (shorthand for validation code)."""
    raise VizkitError(message)

"""The one exception type a user sees: CLIs turn it into one line on stderr and exit code 2."""


class VizkitError(Exception):
    """A problem with the user's input: the message names it and says what to do."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's first line (its type if it has no text), for the one-line messages users get."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]

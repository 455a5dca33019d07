"""One exception type for every user-facing failure: the CLI prints its message on one line and exits 2."""


class FairError(Exception):
    """A problem with the user's input or environment, explained in one line that names the culprit."""

"""One exception type for every bad input a user can give.

The CLI prints these as a single line (no traceback), so each message must say what was
wrong and what to do instead, on one line.
"""


class MgsteerError(Exception):
    """A user-facing error: bad argument, bad file, incompatible model/SAE pair."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))

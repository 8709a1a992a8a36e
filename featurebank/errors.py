"""The error users see. Every layer raises it (or a subclass) for bad input; the command line
prints its message and exits 1 instead of a traceback."""


class FeaturebankError(Exception):
    """Bad input or state the user can fix; the message names the file or field and what to do."""

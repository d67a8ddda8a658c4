"""The CLI's one error type: whatever a command cannot do, said in one line."""

EXIT_ERROR = 1
EXIT_USAGE = 2


class CliError(Exception):
    """A failure to report as one line."""

"""What a command tells whoever ran it: its exit code, and the error that means bad input.

0: success; 1: the run found a wrong implementation or an error, or a comparison found a
regression; 2: bad usage or input (one line on stderr, no traceback, nothing written); 130:
interrupted (Ctrl-C), with the finished cases kept.
"""

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(ValueError):
    """Bad usage or input: the command line says it in one line and exits 2."""

"""The user-facing error type and the one place that turns it into a line on stderr.

A researcher who mistypes a path or feeds a malformed TSV should read one sentence that names the thing at
fault and what is valid, not a 30-line traceback through Hydra. Every error a user can cause derives from
`AtlasError`; the entry points (`python -m atlas_pl`, `python -m atlas_pl.report`, ...) wrap their work in
`user_errors()`. Anything else that escapes is a bug, and keeps its traceback so it can be reported.

Importing this module must stay cheap (no torch): config refusals answer in about a second.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_USER_ERROR = 2
DEBUG_VARIABLES = ("ATLAS_DEBUG", "HYDRA_FULL_ERROR")


class AtlasError(Exception):
    """Bad input the user can fix: the message names what is wrong and what is valid or what to do.

    Subclasses keep their historical base (ValueError, RuntimeError) too, so callers that catch those
    still work.
    """

    def lines(self) -> list[str]:
        """What the entry point prints after `atlas_pl: `; several problems get one line each."""
        return [str(self)]


class JobDirectoryError(AtlasError, RuntimeError):
    """The output directory cannot take this job (it holds another one, or cannot be written)."""


class CheckpointError(AtlasError, ValueError):
    """A checkpoint or job marker that cannot be resumed from; the message says which and why."""


class RunEnvironmentError(AtlasError, RuntimeError):
    """The machine cannot run what the config asks for (e.g. a GPU accelerator without a GPU)."""


class DivergedError(AtlasError, RuntimeError):
    """Training produced non-finite numbers everywhere: the job cannot produce a meaningful result."""


def debugging() -> bool:
    """True when the user asked for full tracebacks (ATLAS_DEBUG=1 or Hydra's HYDRA_FULL_ERROR=1)."""
    return any(os.environ.get(name, "") not in ("", "0", "false", "False") for name in DEBUG_VARIABLES)


def report(err: AtlasError, prog: str = "atlas_pl") -> None:
    """Print `err` as `prog: <message>` lines on stderr."""
    lines = err.lines()
    if len(lines) == 1:
        print(f"{prog}: {lines[0]}", file=sys.stderr)
        return
    print(f"{prog}: {lines[0]}", file=sys.stderr)
    for line in lines[1:]:
        print(f"  - {line}", file=sys.stderr)


@contextmanager
def user_errors(prog: str = "atlas_pl") -> Iterator[None]:
    """Turn an AtlasError into its message on stderr and exit status 2 (unless debugging)."""
    try:
        yield
    except AtlasError as err:
        if debugging():
            raise
        report(err, prog)
        sys.stderr.flush()
        raise SystemExit(EXIT_USER_ERROR) from None


class EngineError(AtlasError, RuntimeError):
    """A party the engine could not reach or that failed where it ran (engine=flower: a ClientApp)."""

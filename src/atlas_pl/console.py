"""What a job's console shows: atlas_pl's and Hydra's lines; other libraries' output goes to the log file.

Hydra's job logging (conf/hydra/default.yaml) writes every record to `<output dir>/atlas_pl.log` and puts
`ConsoleFilter` on the console handler, so a warning from transformers, torch or Lightning is kept in the
file while the console stays readable. Errors are shown whatever their source. `quiet_third_party` makes
the libraries that print on their own (transformers' stderr handler and progress bars, `warnings.warn`)
log through Python logging instead, so that the filter sees them.

Imported by `logging.config.dictConfig` when Hydra sets up logging: keep this module import-light.
"""

from __future__ import annotations

import logging
import os
import re
import sys

# first dotted part of a logger name shown on the console at any level
CONSOLE_LOGGERS = frozenset({"atlas_pl", "hydra", "hydra_plugins", "__main__"})

# file-only lines: log with extra={"console": False} (e.g. the final table, which the console gets printed)
FILE_ONLY = {"console": False}

# whether an app asked for third-party output to be routed (quiet_third_party)
_routing = False

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class PlainFormatter(logging.Formatter):
    """The log file's formatter: terminal colour codes (transformers' bold LOAD REPORT title) removed."""

    def format(self, record: logging.LogRecord) -> str:
        return _ANSI.sub("", super().format(record))


class ConsoleFilter(logging.Filter):
    """Passes our own and Hydra's records, and anybody's errors (all records with `third_party`, e.g.
    `hydra.job_logging.filters.own_lines.third_party=true`); the file handler has no filter."""

    def __init__(self, third_party: bool = False) -> None:
        super().__init__()
        self.third_party = third_party

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "console", True) is False:
            return False
        if self.third_party or record.levelno >= logging.ERROR:
            return True
        return record.name.split(".", 1)[0] in CONSOLE_LOGGERS


def quiet_third_party() -> None:
    """Route third-party warnings and logs to the job's log file (the console filter keeps them off the
    console): the apps call this once Hydra configured logging. Nothing heavy is imported here, so a
    refused job directory still answers at once; `route_library_logs` follows when the job starts."""
    global _routing
    # HF progress bars (transformers' "Loading weights", datasets' "Generating split") are read at import;
    # a user who exported these variables keeps what they chose
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    logging.captureWarnings(True)  # warnings.warn -> the `py.warnings` logger -> the log file
    for noisy in (
        "lightning",
        "lightning.pytorch",
        "lightning.fabric",
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
    ):
        # Lightning's INFO lines ("GPU available", "Trainer already configured") repeat for every client
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _routing = True
    route_library_logs(imported_only=True)


def route_library_logs(*, imported_only: bool = False) -> None:
    """transformers and datasets each put a stderr handler of their own on their root logger (transformers
    also stops propagation): drop it, so their records go where the job's logging sends them.

    A no-op unless an app asked for it (quiet_third_party): `run_job` from a notebook or a test leaves the
    libraries as they were. run.py calls it before the model loads (importing transformers); code that
    imports datasets later (a hub or file task) calls it right after the import."""
    if not _routing:
        return
    if not imported_only or "transformers" in sys.modules:
        import transformers.utils.logging as hf_logging

        hf_logging.disable_default_handler()
        hf_logging.enable_propagation()
        if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").upper() in ("1", "ON", "YES", "TRUE"):
            hf_logging.disable_progress_bar()  # transformers read the variable already if imported before
    # datasets; Flower and Ray (engine=flower) print through console handlers of their own
    for name in ("datasets", "flwr", "ray"):
        if name in sys.modules:
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                if isinstance(handler, logging.StreamHandler) and not isinstance(
                    handler, logging.FileHandler
                ):
                    logger.removeHandler(handler)  # theirs: Hydra's handlers sit on the root logger
            logger.propagate = True

"""Hydra callbacks: checks that must run before Hydra itself touches the output directory.

Hydra creates the job directory and opens its log file there before our task function runs, so an
unwritable `hydra.run.dir` (a file in the way, a read-only parent) would surface as a traceback from
the logging setup. These callbacks run first and answer with the usual one-line error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from atlas_pl.errors import user_errors
from atlas_pl.jobdir import check_writable


class OutputDirectoryCheck(Callback):
    """Refuses an output directory that cannot be created or written, before logging is configured."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir", "the output directory (hydra.run.dir)")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir", "the sweep directory (hydra.sweep.dir)")

    @staticmethod
    def _check(config: DictConfig, key: str, what: str) -> None:
        directory = OmegaConf.select(config, key)
        if directory is None:
            return
        with user_errors():
            check_writable(Path(str(directory)), what)


class SweepEnd(Callback):
    """A sweep prints one line per job (reporting/job_end.py); at its end, where the jobs are and the
    command that compares them."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from atlas_pl.reporting.job_end import sweep_end_text

        directory = OmegaConf.select(config, "hydra.sweep.dir")
        if directory is not None:
            print(sweep_end_text(Path(str(directory))), flush=True)

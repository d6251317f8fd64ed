"""Hydra's basic sweeper, but every job's config is validated before the first job starts.

The basic sweeper composes a batch's configs just before launching it, and only the job itself runs
atlas_pl's validation (`config_validation.validate_config`): a sweep with one bad value ran every job
before it, then failed at that job, and the jobs after it never started. Half a sweep is worse than none:
its results are incomplete and re-running it means sorting out which jobs already ran. The basic sweeper
composed every job's config before launching its batch anyway (`validate_batch_is_legal`); here each is
composed once, all before the first batch, and validating a composed config reads only the config
(milliseconds; composing takes about 0.15 s a job).

A sweep with an invalid job starts no job and creates no job directory (the output-directory check
has made the sweep directory, empty, before): it prints one `atlas_pl: invalid sweep:` line and then
`  - job #N (<its swept values>): <problem>` lines to stderr, like the single-job
message of `atlas_pl.__main__.app`, and exits with status 2 (through `atlas_pl.errors.user_errors`, as
every user error does). With HYDRA_FULL_ERROR=1 or ATLAS_DEBUG=1 the error is raised instead, for a
traceback.

`conf/hydra/sweeper/basic.yaml` makes this the default sweeper: it shares its name with the basic sweeper's
ConfigStore entry, so Hydra merges it onto `BasicSweeperConf` (which checks our keys) and warns that this
matching is deprecated; the warning is silenced in this package's `__init__.py` for the job processes,
which compose their config again, and in `atlas_pl/__main__.py` for the sweep's own process (Hydra's plugin
scan imports this package inside `warnings.catch_warnings()`, which drops filters set during the import).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import filter_overrides
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import OmegaConf, open_dict, read_write

from atlas_pl.errors import AtlasError, user_errors
from atlas_pl.override_check import config_keys, describe_composition_error

MAX_PROBLEM_LINES = 20  # a bad value shared by a 500-job sweep should not print 500 lines


class InvalidSweepError(AtlasError, ValueError):
    """Some of a sweep's jobs have invalid configs; `problems` has one line per problem, naming the job."""

    def __init__(self, header: str, problems: list[str]) -> None:
        self.header = header
        self.problems = problems
        super().__init__("\n".join([header, *problems]))

    def lines(self) -> list[str]:
        return [f"invalid sweep: {self.header}", *self.problems]


def job_labels(jobs: Sequence[Sequence[str]]) -> list[str]:
    """Each job's overrides that are not the same in every job: what tells the user which job it is.

    The basic sweeper gives every job the same keys in the same order, so position i is one key.
    A job with nothing of its own (a sweep of one job) is labelled with all its overrides.
    """
    lists = [list(filter_overrides(job)) for job in jobs]
    width = max((len(job) for job in lists), default=0)
    varying = [i for i in range(width) if len({tuple(job[i : i + 1]) for job in lists}) > 1]
    labels = [" ".join(job[i] for i in varying if i < len(job)) for job in lists]
    return [label or " ".join(job) for label, job in zip(labels, lists)]


class ValidatingSweeper(BasicSweeper):
    """BasicSweeper that refuses a sweep before its first job when any job's config is invalid."""

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        try:
            overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        except OverrideParseException as err:
            with user_errors():
                raise InvalidSweepError(
                    "an override does not parse; no job was started:",
                    [describe_composition_error(err, arguments, self._known_keys)],
                ) from err
        batches = self.split_arguments(overrides, self.max_batch_size)
        self._refuse_invalid([job for batch in batches for job in batch])
        with user_errors():  # a job stopped by bad input (a data file, say): its line, not a traceback
            return super().sweep(arguments)

    def _known_keys(self) -> list[str]:
        assert self.config is not None
        return config_keys(self.config)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Nothing left to check: `sweep` composed and validated every job of every batch already."""

    def _refuse_invalid(self, jobs: Sequence[Sequence[str]]) -> None:
        """Exit with status 2 (raise InvalidSweepError when debugging) if any job's config is invalid.

        A job whose config cannot be composed at all raises Hydra's own error here, before any job too.
        """
        from atlas_pl.config_validation import ConfigError

        labels = job_labels(jobs)
        problems: dict[int, list[str]] = {}
        for job_num, job in enumerate(jobs):
            try:
                self._validate_job(job_num, job)
            except ConfigError as err:
                problems[job_num] = list(err.problems)
            except AtlasError as err:  # the model's structure rules it out (preflight), e.g. no device fits
                problems[job_num] = [str(err)]
            except (ConfigCompositionException, MissingConfigException) as err:  # a mistyped key or option
                problems[job_num] = [describe_composition_error(err, job, self._known_keys)]
        if not problems:
            return
        # a bad value every job shares (not a swept one) is said once, not once per job
        shared = [
            problem
            for problem in problems.get(0, [])
            if len(jobs) > 1 and all(problem in problems.get(n, []) for n in range(1, len(jobs)))
        ]
        lines = [f"all {len(jobs)} jobs: {problem}" for problem in shared]
        for job_num, own in problems.items():
            lines += [f"job #{job_num} ({labels[job_num]}): {p}" for p in own if p not in shared]
        verb = "has" if len(problems) == 1 else "have"
        header = f"{len(problems)} of {len(jobs)} jobs {verb} invalid values; no job was started:"
        if len(lines) > MAX_PROBLEM_LINES:
            lines = [*lines[:MAX_PROBLEM_LINES], f"... and {len(lines) - MAX_PROBLEM_LINES} more problems"]
        with user_errors():
            raise InvalidSweepError(header, lines)

    def _validate_job(self, job_num: int, overrides: Sequence[str]) -> None:
        """Compose the job's config as the launcher will, and validate what its task function would get.

        The job's Hydra config (its number, id and output directory, as `hydra.core.utils.run_job` sets
        them) is current while validating, so that `${hydra:...}` values resolve as they will in the job.
        """
        from atlas_pl.settings import build_settings

        assert self.config is not None and self.hydra_context is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = f"{cfg.hydra.job.name}_{job_num}"
            cfg.hydra.job.num = job_num
        hydra_config = HydraConfig.instance()
        previous = hydra_config.cfg
        try:
            hydra_config.set_config(cfg)
            output_dir = os.path.join(
                str(OmegaConf.select(cfg, "hydra.sweep.dir")),
                str(OmegaConf.select(cfg, "hydra.sweep.subdir")),
            )
            with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
                cfg.hydra.runtime.output_dir = os.path.abspath(output_dir)
            hydra_config.set_config(cfg)
            task_cfg = copy.deepcopy(cfg)
            with read_write(task_cfg), open_dict(task_cfg):
                del task_cfg["hydra"]
            build_settings(task_cfg)  # the config checks, then what the model's config.json rules out
        finally:
            hydra_config.cfg = previous

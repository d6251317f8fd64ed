"""A Hydra launcher that runs each sweep job in its own, freshly spawned process (`hydra/launcher=joblib`).

Hydra's joblib launcher hands jobs to joblib's loky backend, which keeps its worker processes alive and
reuses them for the next job. A job here imports torch, seeds its RNGs, sets thread counts, fills module
caches and opens a W&B run; a second job in the same worker would inherit all of that. So
`conf/hydra/launcher/joblib.yaml` points at `FreshProcessLauncher` instead: up to `n_jobs` jobs run at once,
and every job gets a new interpreter started with the `spawn` method (not `fork`: the parent holds threads,
and a forked child would copy the parent's state, which is what we want to avoid) that exits when its job
ends. The job and its result travel as cloudpickle bytes over a pipe, so return values still reach the
sweeper (Optuna needs them).

A job that fails comes back as a FAILED `JobReturn`, as with Hydra's basic and joblib launchers, whatever
went wrong: its task raised, it called sys.exit (atlas_pl does on an invalid config), it ran past
`timeout`, or its process died. `launch()` itself does not raise for a job, so the sweeper decides: Hydra's
basic sweeper reads every return value and so raises the first failure (the sweep still fails, with the
job's error), and Optuna's counts failed trials against `max_failure_rate`. The error is a RuntimeError
whose message holds the original error's type, message and traceback (for sys.exit, the end of what the
job wrote to stderr): the child turns the exception into text itself, because an exception can pickle and
still fail to unpickle (one whose __init__ takes several arguments, like InfeasibleClientError), and the
original exception's traceback would not survive pickling anyway.

Parallel jobs would each start one torch thread per core and fight over the CPUs, so every job gets
OMP_NUM_THREADS = MKL_NUM_THREADS = usable cores // n_jobs (at least 1), set in the child before torch is
imported. A thread count the user exported in OMP_NUM_THREADS is kept, and `trainer.num_threads` still wins
inside the job (it calls torch.set_num_threads).

The config (conf/hydra/launcher/joblib.yaml) shares its path with the joblib plugin's ConfigStore entry, so
that users keep typing `hydra/launcher=joblib`; our config directory is searched first, and Hydra merges the
file onto the plugin's schema (`JobLibLauncherConf`). The launcher therefore accepts all of joblib's keys:
`n_jobs` and `timeout` mean what they mean in joblib, the loky-only ones do not apply and are reported when
set. Hydra warns that this schema matching is deprecated (it is still there in 1.3, the last 1.x); the
warning is silenced below for our three launcher files, and should a later Hydra drop the matching, the
files load on their own just the same.

Hydra's own global state (ConfigStore, HydraConfig, JobRuntime and the registered OmegaConf resolvers such
as `atlas_root`) reaches each child through `Singleton.get_state()`, as in the plugin.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from atlas_pl.errors import EXIT_USER_ERROR, AtlasError

log = logging.getLogger(__name__)

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

# For the job processes, which compose their config again; Hydra's plugin scan imports this module inside
# warnings.catch_warnings(), so the parent gets the same filter from atlas_pl/__main__.py.
warnings.filterwarnings(
    "ignore",
    message=r"\s*'hydra/launcher/(joblib|submitit_local|submitit_slurm)' is validated against ConfigStore",
    category=UserWarning,
)


def usable_cpus() -> int:
    """CPUs this process may run on (respects taskset / container CPU sets, unlike os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_n_jobs(n_jobs: int) -> int:
    """joblib's convention: -1 = all usable CPUs, -2 = all but one, ...; 0 is an error."""
    if n_jobs == 0:
        raise ValueError("hydra.launcher.n_jobs=0: give a number of parallel jobs, or -1 for all CPUs")
    if n_jobs < 0:
        return max(1, usable_cpus() + 1 + n_jobs)
    return n_jobs


def threads_per_job(n_jobs: int) -> int | None:
    """Threads each of `n_jobs` parallel jobs may use; None = keep the OMP_NUM_THREADS the user exported."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, usable_cpus() // n_jobs)


def _announced(task_function: TaskFunction, job_num: int) -> TaskFunction:
    """Wrap the task so the job's own log records which process ran it, and when it started and ended."""

    @functools.wraps(task_function)
    def wrapper(cfg: DictConfig) -> Any:
        log.info("job #%d started in process %d", job_num, os.getpid())
        try:
            return task_function(cfg)
        finally:
            log.info("job #%d ended in process %d", job_num, os.getpid())

    return wrapper


def _execute_job(
    job_num: int,
    overrides: Sequence[str],
    hydra_context: HydraContext,
    config: DictConfig,
    task_function: TaskFunction,
    singleton_state: dict[Any, Any],
) -> JobReturn:
    """Runs in the child: rebuild Hydra's global state, compose this job's config, run it."""
    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{job_num}"
        sweep_config.hydra.job.num = job_num
    HydraConfig.instance().set_config(sweep_config)
    return run_job(
        hydra_context=hydra_context,
        config=sweep_config,
        task_function=_announced(task_function, job_num),
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


def _traceback_text(error: BaseException) -> str:
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip()
    return f"Traceback in the job's process:\n{trace}"


def _describe(error: BaseException) -> str:
    """`Type: message`, then the traceback, as text: what reaches the launcher of an error in the child."""
    summary = "".join(traceback.format_exception_only(type(error), error)).strip()
    return f"{summary}\n\n{_traceback_text(error)}"


class _StderrTail:
    """sys.stderr of a job process: writes go through, and the last `limit` characters are kept."""

    def __init__(self, stream: Any, limit: int = 2000) -> None:
        self._stream = stream
        self._limit = limit
        self._tail = ""

    def write(self, text: str) -> int:
        self._tail = (self._tail + text)[-self._limit :]
        return self._stream.write(text)

    def tail(self) -> str:
        text = self._tail
        if len(text) == self._limit and "\n" in text:
            text = text.split("\n", 1)[1]  # drop the partial first line
        return text.strip()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _encode(message: tuple[Any, ...]) -> bytes:
    """Pickle a message for the launcher, and unpickle it here first: a value that pickles may still not
    unpickle (an exception whose __init__ takes several arguments), and that must fail here, not there."""
    import cloudpickle

    data = cloudpickle.dumps(message)
    cloudpickle.loads(data)
    return data


def _child_main(payload: bytes, conn: Connection, threads: int | None) -> None:
    """Entry point of a job process: thread limits first (before anything imports torch), then the job.

    Sends back ("ok", JobReturn) for a job that completed, ("failed", JobReturn, text) for one whose task
    raised (the JobReturn without the exception, which travels as text), ("exit", text, code, the job's
    `atlas_pl:` lines) when the task
    called sys.exit, or ("error", text) when something else failed.
    """
    if threads is not None:
        for var in THREAD_ENV_VARS:
            os.environ[var] = str(threads)
    import cloudpickle

    stderr = _StderrTail(sys.stderr)
    sys.stderr = stderr  # type: ignore[assignment]
    message: tuple[Any, ...]
    try:
        args = cloudpickle.loads(payload)
        ret = _execute_job(*args)
        if ret.status == JobStatus.FAILED:
            text = _describe(ret._return_value)
            ret.return_value = None
            message = ("failed", ret, text)
        else:
            message = ("ok", ret)
    except SystemExit as stop:
        text = f"SystemExit: exit status {stop.code!r}"
        if stderr.tail():
            text += f"\n\nThe end of what the job wrote to stderr:\n{stderr.tail()}"
        message = ("exit", f"{text}\n\n{_traceback_text(stop)}", stop.code, _user_error_lines(stderr.tail()))
    except BaseException as error:
        message = ("error", _describe(error))
    try:
        data = _encode(message)
    except BaseException as error:  # e.g. a return value that cannot travel
        text = f"its result could not be sent to the launcher: {_describe(error)}"
        data = cloudpickle.dumps(("error", text))
    conn.send_bytes(data)
    conn.close()


class JobInputError(AtlasError, RuntimeError):
    """A job stopped on bad input (exit 2 after its `atlas_pl:` line): the sweep reports that line."""

    def __init__(self, job_num: int, overrides: Sequence[str], lines: Sequence[str]) -> None:
        self.job_lines = list(lines)
        super().__init__(f"job #{job_num} ({' '.join(overrides)}) stopped: {self.job_lines[0]}")

    def lines(self) -> list[str]:
        return [str(self), *self.job_lines[1:]]


def _user_error_lines(tail: str) -> list[str]:
    """The `atlas_pl: ...` message (and its `  - ` continuation lines) a job wrote before exiting 2."""
    lines = tail.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("atlas_pl: ")]
    if not starts:
        return []
    first = starts[-1]
    rest = [line[4:] for line in lines[first + 1 :] if line.startswith("  - ")]
    return [lines[first].removeprefix("atlas_pl: "), *rest]


def _failed(job_num: int, overrides: Sequence[str], text: str, ret: JobReturn | None = None) -> JobReturn:
    """A FAILED JobReturn; its return value, raised when a sweeper reads it, is a RuntimeError with `text`."""
    if ret is None:
        ret = JobReturn(overrides=list(overrides))
    ret.status = JobStatus.FAILED
    ret.return_value = RuntimeError(f"job #{job_num} failed: {text}")
    log.warning("job #%d failed: %s", job_num, text.split("\n", 1)[0])
    return ret


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def _run_in_fresh_process(
    payload: bytes,
    job_num: int,
    overrides: Sequence[str],
    threads: int | None,
    timeout: float | None,
    context: Any,
) -> JobReturn:
    """Start one process for one job, wait for its result, and make sure the process is gone afterwards.

    Never raises for the job: a job that fails in any way comes back as a FAILED JobReturn (see `_failed`).
    """
    import cloudpickle

    receive, send = context.Pipe(duplex=False)
    process = context.Process(
        target=_child_main, args=(payload, send, threads), name=f"atlas_pl-job-{job_num}", daemon=False
    )
    process.start()
    send.close()  # only the child writes; EOF on `receive` then means the child is gone
    message: tuple[Any, ...] | None = None
    problem: str | None = None
    try:
        if not receive.poll(timeout):
            process.terminate()
            problem = f"TimeoutError: exceeded hydra.launcher.timeout={timeout} s; stopped"
        else:
            try:
                message = cloudpickle.loads(receive.recv_bytes())
            except EOFError:
                pass  # it died without a result: reported below, once its exit code is known
            except Exception as error:
                problem = f"the launcher could not read its result: {_describe(error)}"
    finally:
        receive.close()
        process.join(timeout=60)  # the child exits right after sending its result
        if process.is_alive():
            process.kill()
            process.join()
    if problem is not None:
        return _failed(job_num, overrides, problem)
    if message is None:
        return _failed(
            job_num,
            overrides,
            f"its process {process.pid} {_exit_reason(process.exitcode)} before sending a result",
        )
    status = message[0]
    if status == "ok":
        return message[1]
    if status == "failed":
        return _failed(job_num, overrides, message[2], ret=message[1])
    if status == "exit":
        ret = _failed(job_num, overrides, message[1])
        if message[2] == EXIT_USER_ERROR and message[3]:  # bad input, already said in one line: pass it on
            ret.return_value = JobInputError(job_num, filter_overrides(overrides), message[3])
        return ret
    return _failed(job_num, overrides, f"outside its task: {message[1]}")


# joblib keys of the plugin's schema that only configure loky, with the values that mean "not set"
_LOKY_ONLY_DEFAULTS: dict[str, Any] = {
    "backend": None,
    "prefer": "processes",
    "require": None,
    "verbose": 0,
    "pre_dispatch": "2*n_jobs",
    "batch_size": "auto",
    "temp_folder": None,
    "max_nbytes": None,
    "mmap_mode": "r",
}


class FreshProcessLauncher(Launcher):
    """Runs up to `n_jobs` Hydra jobs at a time, each in a new process that ends with its job."""

    start_method = "spawn"

    def __init__(self, n_jobs: int = 2, timeout: float | None = None, **joblib_options: Any) -> None:
        self.n_jobs = int(n_jobs)
        self.timeout = None if timeout is None else float(timeout)
        self.ignored = {
            key: value
            for key, value in joblib_options.items()
            if key not in _LOKY_ONLY_DEFAULTS or value != _LOKY_ONLY_DEFAULTS[key]
        }
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Run the batch; results come back in the order of `job_overrides`, as Hydra's sweepers expect.

        A failed job is a FAILED JobReturn in the list, not an exception: the sweeper decides what it means.
        """
        import cloudpickle

        setup_globals()
        assert self.config is not None and self.task_function is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)

        parallel = min(resolve_n_jobs(self.n_jobs), max(1, len(job_overrides)))  # at once, in this batch
        threads = threads_per_job(parallel)
        context = multiprocessing.get_context(self.start_method)
        if self.ignored:
            log.warning("hydra.launcher: %s only configure joblib's loky backend; ignored", self.ignored)
        log.info(
            "FreshProcessLauncher(n_jobs=%d, threads per job=%s) is launching %d jobs, one %s process each",
            parallel,
            threads if threads is not None else f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
            len(job_overrides),
            self.start_method,
        )
        log.info("Launching jobs, sweep output dir : %s", sweep_dir)
        singleton_state = Singleton.get_state()
        payloads: list[tuple[bytes, int, Sequence[str]]] = []
        for idx, overrides in enumerate(job_overrides):
            job_num = initial_job_idx + idx
            log.info("\t#%d : %s", job_num, " ".join(filter_overrides(overrides)))
            args = (job_num, overrides, self.hydra_context, self.config, self.task_function, singleton_state)
            payloads.append((cloudpickle.dumps(args), job_num, overrides))

        def run_one(item: tuple[bytes, int, Sequence[str]]) -> JobReturn:
            return _run_in_fresh_process(*item, threads, self.timeout, context)

        with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="atlas_pl-launcher") as pool:
            return list(pool.map(run_one, payloads))

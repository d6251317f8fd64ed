"""A Hydra launcher that runs each sweep job in its own, freshly spawned process (`hydra/launcher=joblib`).

Hydra's joblib launcher hands jobs to joblib's loky backend, which keeps its worker processes alive and
reuses them for the next job. A job here imports torch, seeds its RNGs, sets thread counts, fills module
caches and opens a W&B run; a second job in the same worker would inherit all of that. So
`conf/hydra/launcher/joblib.yaml` points at `FreshProcessLauncher` instead: up to `n_jobs` jobs run at once,
and every job gets a new interpreter started with the `spawn` method (not `fork`: the parent holds threads,
and a forked child would copy the parent's state, which is what we want to avoid) that exits when its job
ends. The job and its result travel as cloudpickle bytes over a pipe, so return values still reach the
sweeper (Optuna needs them).

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
import traceback
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

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


def _child_main(payload: bytes, conn: Connection, threads: int | None) -> None:
    """Entry point of a job process: thread limits first (before anything imports torch), then the job.

    Sends back ("ok", JobReturn) - a job whose task raised is a JobReturn too, as with any launcher -,
    ("exit", code) when the task called sys.exit (atlas_pl does on an invalid config), or ("error", text).
    """
    if threads is not None:
        for var in THREAD_ENV_VARS:
            os.environ[var] = str(threads)
    import cloudpickle

    try:
        args = cloudpickle.loads(payload)
        ret = _execute_job(*args)
        try:
            data = cloudpickle.dumps(("ok", ret))
        except Exception:  # an exception the task raised may not pickle: keep its text
            failure = ret._return_value
            ret._return_value = RuntimeError(f"{type(failure).__name__}: {failure}")
            data = cloudpickle.dumps(("ok", ret))
    except SystemExit as stop:
        data = cloudpickle.dumps(("exit", stop.code))
    except BaseException:
        data = cloudpickle.dumps(("error", traceback.format_exc()))
    conn.send_bytes(data)
    conn.close()


def _run_in_fresh_process(
    payload: bytes, job_num: int, threads: int | None, timeout: float | None, context: Any
) -> JobReturn:
    """Start one process for one job, wait for its result, and make sure the process is gone afterwards."""
    import cloudpickle

    receive, send = context.Pipe(duplex=False)
    process = context.Process(
        target=_child_main, args=(payload, send, threads), name=f"atlas_pl-job-{job_num}", daemon=False
    )
    process.start()
    send.close()  # only the child writes; EOF on `receive` then means the child is gone
    try:
        if not receive.poll(timeout):
            process.terminate()
            raise TimeoutError(f"job #{job_num} exceeded hydra.launcher.timeout={timeout} s; stopped")
        try:
            status, value = cloudpickle.loads(receive.recv_bytes())
        except EOFError:
            process.join()
            raise RuntimeError(
                f"job #{job_num} (process {process.pid}) died with exit code {process.exitcode}"
            ) from None
    finally:
        receive.close()
        process.join(timeout=60)  # the child exits right after sending its result
        if process.is_alive():
            process.kill()
            process.join()
    if status == "exit":
        raise RuntimeError(f"job #{job_num} exited with status {value} (its message is above)")
    if status == "error":
        raise RuntimeError(f"job #{job_num} failed outside its task:\n{value}")
    return value


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
        """Run the batch; results come back in the order of `job_overrides`, as Hydra's sweepers expect."""
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
        payloads: list[tuple[bytes, int]] = []
        for idx, overrides in enumerate(job_overrides):
            job_num = initial_job_idx + idx
            log.info("\t#%d : %s", job_num, " ".join(filter_overrides(overrides)))
            args = (job_num, overrides, self.hydra_context, self.config, self.task_function, singleton_state)
            payloads.append((cloudpickle.dumps(args), job_num))

        def run_one(item: tuple[bytes, int]) -> JobReturn:
            return _run_in_fresh_process(item[0], item[1], threads, self.timeout, context)

        with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="atlas_pl-launcher") as pool:
            return list(pool.map(run_one, payloads))

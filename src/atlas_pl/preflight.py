"""Checks that need the model's structure but not its weights: run with the config checks, in a second.

The model's config.json (or a tiny model's registry entry) says how many positions, how wide each LoRA
target is and how much memory a client half needs. With that alone, a `data.max_len` beyond the model's
positions (a memory bomb at 100000), a rank wider than a projection, LoRA targets that match nothing,
a device mix where no client fits and, under topology=p2p, one where no pairing exists are all refused
before torch is even imported. The real
allocation in Phase 2 uses the same memory model on the loaded modules (the counts are equal, as
tests/phases/test_memory.py checks), so what passes here fits there.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

from atlas_pl.config_validation import ConfigError
from atlas_pl.data.custom_reader import check_custom_task
from atlas_pl.data.errors import DataError
from atlas_pl.data.glue import SPLITS, glue_file, read_glue_tsv
from atlas_pl.data.partition import MIN_PER_CLIENT
from atlas_pl.data.tasks import is_synthetic, task_spec
from atlas_pl.errors import RunEnvironmentError
from atlas_pl.jobdir import check_writable
from atlas_pl.models.catalog import DEFAULT_TARGETS, ModelSpec, resolve_model_spec
from atlas_pl.models.files import check_model_files, max_tokens, model_config
from atlas_pl.parties.peers import peer_clients, plan_routes
from atlas_pl.parties.planning import allocation_mode, plan, runs_phase1
from atlas_pl.phases.allocation import ClientAllocation
from atlas_pl.phases.devices import assign_devices
from atlas_pl.phases.memory import ModelArch, NoTargetsMatched
from atlas_pl.settings import Settings


def preflight(settings: Settings) -> None:
    """Raise ConfigError (or InfeasibleClientError) for what the model's structure rules out."""
    _check_oracle_clusters(settings)
    spec = resolve_model_spec(settings.model.name)
    problems = check_model_files(spec)
    if problems:
        raise ConfigError(problems)
    config = model_config(spec)
    if config is None:
        return  # a hub model not on this machine: the loader reports what is missing
    arch, problems = _structure(settings, spec, config)
    if problems:
        raise ConfigError(problems)
    if arch is not None:
        check_devices_fit(settings, arch)


def _check_oracle_clusters(settings: Settings) -> None:
    """clustering.by_task replaces Phase 1's clusters: where none are made it would silently do nothing."""
    if settings.clustering.by_task and not runs_phase1(settings):
        raise ConfigError(
            [
                f"clustering.by_task=True is invalid; valid: false with ablation={settings.ablation.name}, "
                "which runs no Phase 1 (by_task replaces its clusters: ablation=atlas or fedavg_cluster, "
                "or ranks from cluster importance under allocation.mode=importance)"
            ]
        )


def _structure(
    settings: Settings, spec: ModelSpec, config: SimpleNamespace
) -> tuple[ModelArch | None, list[str]]:
    """The model's architecture as the memory model sees it, and what it rules out in the settings."""
    problems = []
    limit = max_tokens(spec, config)
    if limit is not None and settings.data.max_len > limit:
        problems.append(
            f"data.max_len={settings.data.max_len} is invalid; valid: an integer in 8..{limit} "
            f"({spec.name} has {limit} positions)"
        )
    targets = list(settings.model.lora_targets or DEFAULT_TARGETS[spec.family])
    try:
        arch = ModelArch.from_hf_config(spec.family, config, targets)
    except NoTargetsMatched as err:
        problems.append(f"model.lora_targets={targets!r} is invalid; {err}")
        return None, problems
    except (ValueError, TypeError, AttributeError) as err:  # a config.json without the usual fields
        problems.append(f"model.name={settings.model.name!r}: its config cannot be read ({err})")
        return None, problems
    problems += _ranks_too_wide(settings, spec, arch)
    return arch, problems


def _ranks_too_wide(settings: Settings, spec: ModelSpec, arch: ModelArch) -> list[str]:
    """Ranks no target can use: beyond min(in, out) of the widest target, extra components add nothing
    (the update is already full-rank everywhere), yet the allocator would spend the memory budget on them.
    Only the rank settings the run reads are checked."""
    widest = max(min(t.in_features, t.out_features) for t in arch.targets)
    mode = allocation_mode(settings)
    ranks = {"lora.rank": [settings.lora.rank]}  # the provisional model Phase 1 fingerprints, and fixed mode
    if mode != "fixed":
        ranks["allocation.rank_candidates"] = list(settings.allocation.rank_candidates)
    if mode == "uniform" and settings.allocation.uniform_rank is not None:
        ranks["allocation.uniform_rank"] = [settings.allocation.uniform_rank]
    problems = []
    for key, values in ranks.items():
        if any(r > widest for r in values):
            shown = values if key == "allocation.rank_candidates" else values[0]
            problems.append(
                f"{key}={shown!r} is invalid; valid: ranks <= {widest} (min(in, out) of the widest LoRA "
                f"target of {spec.name}; a larger rank adds no capacity, only memory)"
            )
    return problems


def check_devices_fit(settings: Settings, arch: ModelArch) -> None:
    """Phase 2's feasibility, decided before Phase 1 runs: every client must hold one block (or the
    fixed split) at the minimum rank; with drop_infeasible, at least one client must remain."""
    if settings.ablation.centralized or allocation_mode(settings) == "fixed":
        return  # no split to fit (centralized) or no budgets applied (fixed)
    n_clients = len(settings.tasks) * settings.fed.clients_per_task
    devices = assign_devices(
        n_clients, list(settings.devices.mix), seed=settings.seed, rule=settings.devices.assignment
    )
    allocation_log = logging.getLogger("atlas_pl.phases.allocation")
    allocation_log.disabled = True  # Phase 2 logs its drops when it runs; this rehearsal stays quiet
    try:
        allocations = plan(settings, arch, list(range(n_clients)), devices)  # InfeasibleClientError
    finally:
        allocation_log.disabled = False
    if settings.topology.p2p and not any(a.dropped for a in allocations):
        check_pairing(settings, arch, allocations)
    if all(a.dropped for a in allocations):
        raise ConfigError(
            [
                f"allocation.drop_infeasible=true drops every one of the {n_clients} clients: no device "
                f"of devices.mix={sorted(set(devices))} can hold one block of {arch.family} at rank "
                f"{min(settings.allocation.rank_candidates)}; raise devices.profiles.<device>.memory_gb "
                "(or devices.scale), or lower fed.batch_size or data.max_len"
            ]
        )


def check_pairing(settings: Settings, arch: ModelArch, allocations: list[ClientAllocation]) -> None:
    """topology=p2p: a mix where no pairing exists is refused now (PairingError), not after Phase 1.

    Rehearsed with the clients' true tasks as clusters, ranks allocated before importance (Phase 2's
    final ranks are paired again once it has run) and the head priced as a dense layer plus the
    classifier (the larger of the heads)."""
    per_task = settings.fed.clients_per_task
    clusters = [k // per_task for k in range(len(allocations))]
    heads = [
        arch.hidden * (arch.hidden + 1) + (arch.hidden + 1) * task_spec(settings.tasks[c]).num_labels
        for c in clusters
    ]
    samples = settings.data.samples_per_client or settings.fed.batch_size
    clients = peer_clients(settings, allocations, clusters, [samples] * len(allocations), heads)
    plan_routes(settings, arch, clients)


def check_inputs(settings: Settings) -> None:
    """At job start, before the model loads: the accelerator exists and every local data file parses.

    Reading the TSVs twice (here and when tokenizing) costs well under a second for GLUE; finding a bad
    row after the model has loaded costs the user the load and a traceback."""
    check_accelerator(settings.trainer.accelerator)
    if settings.engine.flower:
        from atlas_pl.engines.flower.env import check_simulation_resources, require_flower

        require_flower()
        e = settings.engine
        check_simulation_resources(e.client_cpus, e.client_gpus, settings.trainer.accelerator)
    d = settings.data
    check_writable(d.cache_dir, "the tokenization cache", "data.cache_dir (or paths.cache_dir)")
    check_writable(settings.cache_dir, "the cache directory", "paths.cache_dir (or ATLAS_CACHE_DIR)")
    per_client = MIN_PER_CLIENT if d.partition == "quantity" else 1
    clients = settings.fed.clients_per_task
    for task in settings.tasks:
        if is_synthetic(task):
            check_enough_examples(task, "generated", d.synthetic_train_size, clients, per_client)
            continue
        if task in settings.custom_tasks:  # columns, labels and rows of the user's own files
            custom = settings.custom_tasks[task]
            n_train = check_custom_task(custom, settings.cache_dir / "datasets")
            check_enough_examples(task, custom.where("train"), n_train, clients, per_client)
            continue
        files = {split: glue_file(d.glue_dir, task, split) for split in SPLITS} if d.glue_dir else {}
        if d.source == "hub" or not all(path.is_file() for path in files.values()):
            continue  # hub data: loaded (and checked) by the data layer
        train = read_glue_tsv(files["train"], task_spec(task))
        read_glue_tsv(files["validation"], task_spec(task))
        check_enough_examples(task, str(files["train"]), len(train), clients, per_client)


def check_enough_examples(
    task: str, where: str, n_train: int, clients_per_task: int, per_client: int = 1
) -> None:
    """Every client needs at least `per_client` examples (one; MIN_PER_CLIENT under quantity skew); the
    partitioner would otherwise fail deep inside, after the model has loaded."""
    if n_train < clients_per_task * per_client:
        each = "" if per_client == 1 else f" x {per_client} rows each (data.partition=quantity)"
        raise DataError(
            f"task {task} has {n_train} training examples ({where}), fewer than "
            f"fed.clients_per_task={clients_per_task}{each}; valid: fed.clients_per_task <= "
            f"{n_train // per_client}"
        )


def check_accelerator(accelerator: str) -> None:
    """A GPU asked for must exist: Lightning would otherwise fail after the model and data are loaded."""
    if accelerator not in ("gpu", "cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise RunEnvironmentError(
            f"trainer.accelerator={accelerator} but no CUDA device is visible to this process "
            "(CUDA_VISIBLE_DEVICES, drivers, or a CPU-only torch build); valid here: cpu or auto"
        )

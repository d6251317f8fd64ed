"""Which config settings, beyond ablation and eta, split the jobs into groups.

A group is meant to be one configuration run under several seeds, so its ± is a spread over seeds and
nothing else. Jobs are therefore grouped by ablation (and eta for the ablations that read it) and by every
other setting whose value differs between the jobs reported, except the seed and the run's plumbing
(`IGNORED`: paths, logger, checkpointing, threads, resume, the experiment's name). The settings that split
show in the labels of every group, `fedavg (fed.local_epochs=2)` beside `fedavg (fed.local_epochs=1)`, so
a sweep over `fed.local_epochs`, `model` or `devices` is never averaged as if its runs were seeds.

Kept compact:

- `ablation.*` settings define the ablation: they split (and show) only where they differ between jobs of
  the same ablation (`atlas (eta=0.1, ablation.importance=client)`);
- a config group's settings that follow from its `name` fold into it: a sweep over `model=tiny_bert,minilm`
  shows as `model=tiny_bert`, not as every model.* key the two model configs set differently;
- a setting a job's config does not have (older code) or has only as an unresolved `${...}` interpolation
  (`.hydra/config.yaml`) is unknown for that job: it neither splits nor is shown for it; except the
  settings added with a value that reproduces older runs (compatibility.ADDED_SETTINGS), which such a job
  ran under and which therefore do split it from a job that turns them on.

When only ablation, eta and seed differ (the usual sweep), nothing splits and the labels are the plain
`fedavg`, `atlas (eta=0.1)`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from atlas_pl.reporting.names import Settings
from atlas_pl.tracking.compatibility import ADDED_SETTINGS

if TYPE_CHECKING:
    from atlas_pl.reporting.reader import Job

# Never split groups: the seed (what a group is over), the group key itself (ablation.name; fed.eta, kept
# for the ablations that read it), and run plumbing that does not change a result (the keys a resumed job
# may change, DESIGN.md §7, plus the experiment's name: its settings themselves are compared).
IGNORED = (
    "seed",
    "ablation.name",
    "fed.eta",
    "experiment_name",
    "resume",
    "paths",
    "logger",
    "checkpoint",
    "hydra",
    "data.glue_dir",
    "data.cache_dir",
    "trainer.num_threads",
    "fed.eval_every",  # when clients are scored, not what they learn
)
ABLATION_PREFIX = "ablation."


def ignored(key: str) -> bool:
    return any(key == name or key.startswith(f"{name}.") for name in IGNORED)


def flat_settings(config: Mapping[str, Any]) -> dict[str, str]:
    """The config's settings as {dotted key: compact value}, without IGNORED keys and unresolved values.

    A setting added since the job ran (compatibility.ADDED_SETTINGS) takes the value the job ran under, so
    a job from before `clustering.by_task` is grouped with the new jobs that have it false, never with
    the oracle's."""
    out: dict[str, str] = {key: format_value(value) for key, value in ADDED_SETTINGS.items()}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for name, value in node.items():
            key = f"{prefix}{name}"
            if ignored(key):
                continue
            if isinstance(value, Mapping) and value:
                walk(value, f"{key}.")
            elif not _unresolved(value):
                out[key] = format_value(value)

    walk(config, "")
    return out


def format_value(value: Any) -> str:
    """A setting as a label shows it: `2`, `0.0005`, `true`, `null`, `[sst2,mrpc]`; exact for floats."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _unresolved(value: Any) -> bool:
    if isinstance(value, str):
        return "${" in value
    if isinstance(value, (list, tuple)):
        return any(_unresolved(v) for v in value)
    if isinstance(value, Mapping):
        return any(_unresolved(v) for v in value.values())
    return False


def _shown(key: str) -> str:
    """`model.name` shows as `model` (the config group it names); every other key as itself."""
    head, _, rest = key.partition(".")
    return head if rest == "name" else key


@dataclass(frozen=True)
class Split:
    """The settings that split the jobs: `keys` for every ablation, `by_ablation` only for that ablation's
    groups (its `ablation.*` settings that vary), `folded` the settings that follow from a `P.name` key."""

    keys: tuple[str, ...] = ()
    by_ablation: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    folded: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.keys) or any(self.by_ablation.values())

    def keys_for(self, ablation: str) -> tuple[str, ...]:
        return tuple(sorted((*self.keys, *self.by_ablation.get(ablation, ()))))

    def settings(self, ablation: str, flat: Mapping[str, str]) -> Settings:
        """The (shown key, value) pairs of a job with these flat settings; keys it lacks are left out."""
        return tuple((_shown(k), flat[k]) for k in self.keys_for(ablation) if k in flat)

    def describe(self) -> str | None:
        """`fed.local_epochs; model (model.name, with model.split_point that follows from it)`, or None."""
        if not self:
            return None
        parts = []
        for key in self.keys:
            folded = self.folded.get(key, ())
            if _shown(key) != key:
                text = f"`{_shown(key)}` ({key}" + (
                    f", with {', '.join(folded)} that follow{'s' if len(folded) == 1 else ''} from it)"
                    if folded
                    else ")"
                )
            else:
                text = f"`{key}`"
            parts.append(text)
        owners: dict[str, list[str]] = defaultdict(list)
        for ablation, keys in sorted(self.by_ablation.items()):
            for key in keys:
                owners[key].append(ablation)
        parts += [f"`{key}` ({', '.join(abls)} only)" for key, abls in sorted(owners.items())]
        return "; ".join(parts)


def find_split(jobs: Sequence[Job]) -> Split:
    """The settings whose values differ between `jobs` (all of them, completed or not, so a partial job's
    label in the excluded list matches the group it would join). Jobs without a config take no part."""
    rows = [(job.ablation, flat_settings(job.config)) for job in jobs if job.config]
    keys = sorted({k for _, flat in rows for k in flat})
    varying: set[str] = set()
    by_ablation: dict[str, set[str]] = defaultdict(set)
    for key in keys:
        if key.startswith(ABLATION_PREFIX):
            for ablation in {a for a, _ in rows}:
                if len(_values(key, (f for a, f in rows if a == ablation))) > 1:
                    by_ablation[ablation].add(key)
        elif len(_values(key, (f for _, f in rows))) > 1:
            varying.add(key)
    folded: dict[str, list[str]] = defaultdict(list)
    for key in sorted(varying):
        name = f"{key.partition('.')[0]}.name"
        if key != name and name in varying and _follows(key, name, [f for _, f in rows]):
            folded[name].append(key)
    hidden = {k for ks in folded.values() for k in ks}
    return Split(
        keys=tuple(sorted(varying - hidden)),
        by_ablation={a: tuple(sorted(ks)) for a, ks in by_ablation.items() if ks},
        folded={name: tuple(ks) for name, ks in folded.items()},
    )


def assign_settings(jobs: Sequence[Job]) -> Split:
    """Find the split over `jobs` and set each job's `settings` (and so its group key and label) from it."""
    split = find_split(jobs)
    for job in jobs:
        job.settings = split.settings(job.ablation, flat_settings(job.config)) if job.config else ()
    return split


def _values(key: str, flats: Iterable[Mapping[str, str]]) -> set[str]:
    return {flat[key] for flat in flats if key in flat}


def _follows(key: str, name: str, flats: Sequence[Mapping[str, str]]) -> bool:
    """Every job that knows `key` knows `name`, and jobs with the same `name` agree on `key`."""
    seen: dict[str, str] = {}
    for flat in flats:
        if key not in flat:
            continue
        if name not in flat or seen.setdefault(flat[name], flat[key]) != flat[key]:
            return False
    return True

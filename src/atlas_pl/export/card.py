"""The README.md model card of an exported client: what it was trained for, how well, and how to load it.

Written from the export's own record (atlas_export.json), so the card and the machine-readable facts
cannot disagree. The front matter is the Hugging Face hub's model-card metadata.
"""

from __future__ import annotations

from typing import Any

# the record keys a card reports, in this order (atlas_export.json keeps the same ones)
METRICS = ("primary", "accuracy", "f1", "mcc", "loss")


def _span(start: int, stop: int) -> str:
    return str(start) if stop - start == 1 else f"{start}-{stop - 1}"


def _load_from(info: dict[str, Any]) -> str:
    """What the loading lines pass to from_pretrained: the public hub id where there is one, so the card's
    code runs on any machine; else the folder the export named (a written or local base)."""
    return str(info.get("base_hub_id") or info["base"])


def _front_matter(info: dict[str, Any]) -> list[str]:
    """The hub's metadata; `base_model` (a hub id only) links the adapter to its base on the hub."""
    front = ["---", "library_name: peft", "pipeline_tag: text-classification"]
    if info.get("base_hub_id"):
        front.append(f"base_model: {info['base_hub_id']}")
    return [*front, "tags: [atlas_pl, lora, federated-learning, split-learning]", "---", ""]


def _centralized(info: dict[str, Any]) -> bool:
    return str(info["ablation"]).startswith("centralized")


def _summary(info: dict[str, Any]) -> list[str]:
    """Title and one sentence: a centralized job's models are one per task, a federated job's per client."""
    central = _centralized(info)
    who = "the centralized baseline" if central else f"client {info['client']} of a federated job"
    eta = f", eta {info['eta']}" if info.get("eta") is not None else ""
    return [
        f"# atlas_pl {'centralized model' if central else 'client ' + info['client']}: "
        f"{info['task'] or 'task unknown'}",
        "",
        f"A LoRA adapter and task head trained with atlas_pl for {who} (ablation `{info['ablation']}`{eta}), "
        f"exported from checkpoint round {info['round']}.",
    ]


def _base_model(info: dict[str, Any]) -> str:
    """The base by name, and where its weights were loaded from when that is not the hub id itself."""
    hub_id, base = info.get("base_hub_id"), info["base"]
    if hub_id and hub_id != base:
        return f"{info['model']}: {hub_id} (weights loaded from `{base}` on the exporting machine)"
    return f"{info['model']} (`{base}`)"


def _split(info: dict[str, Any]) -> str:
    if _centralized(info):
        if info["ablation"] == "centralized_per_task":
            return "none: trained centrally on the data of this task's clients, one adapter per task"
        return "none: trained centrally on every client's data, one adapter shared by all tasks"
    split, blocks = info["split"], len(info["ranks"])
    return (
        f"{split}: blocks {_span(0, split)} trained on the client, {_span(split, blocks)} on the server "
        "(SFL-V1), joined here"
    )


def _facts(info: dict[str, Any]) -> list[str]:
    ranks = ", ".join(str(r) for r in info["ranks"])
    return [
        "| | |",
        "|---|---|",
        f"| task | {info['task'] or 'unknown'} (labels: {', '.join(info['labels'])}) |",
        f"| base model | {_base_model(info)} |",
        f"| split point | {_split(info)} |",
        f"| LoRA ranks per block | {ranks} (alpha {info['alpha']:g}) |",
        f"| LoRA targets | {', '.join(info['targets'])} |",
        f"| cluster | {info['cluster'] if info.get('cluster') is not None else 'n/a'} |",
        f"| device profile | {info.get('device') or 'n/a'} |",
        f"| job | `{info['job_dir']}` |",
    ]


def _metrics_lines(info: dict[str, Any]) -> list[str]:
    metrics = info.get("metrics") or {}
    shown = [f"| {name} | {metrics[name]:.4f} |" for name in METRICS if isinstance(metrics.get(name), float)]
    if not shown:
        return ["No evaluation was recorded for this client in the exported round."]
    where = f"round {info['metrics_round']}" if info.get("metrics_round") is not None else "the last round"
    return [
        f"On its task's validation split ({where}, as the job evaluated it):",
        "",
        "| metric | value |",
        "|---|---|",
        *shown,
    ]


def _usage(info: dict[str, Any]) -> list[str]:
    base = _load_from(info)
    n = info["num_labels"]
    if info["head_placement"] == "modules_to_save":
        return [
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForSequenceClassification",
            "",
            f'base = AutoModelForSequenceClassification.from_pretrained("{base}", num_labels={n})',
            'model = PeftModel.from_pretrained(base, "<this folder>").eval()',
            "logits = model(input_ids=ids, attention_mask=mask).logits",
            "```",
            "",
            "The head is in the adapter (PEFT `modules_to_save`): Hugging Face's classification head is "
            "exactly this client's.",
        ]
    return [
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModel",
        "from atlas_pl.export import load_head",
        "",
        f'model = PeftModel.from_pretrained(AutoModel.from_pretrained("{base}"), "<this folder>").eval()',
        'head = load_head("<this folder>")',
        "logits = head(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)",
        "```",
        "",
        f"The head is in `head.safetensors` (see `head.json`: {info['pooling']} pooling, {info['head_kind']} "
        "layer): Hugging Face's classification head for this model computes something else, so it is not "
        "put in the adapter. `atlas_pl.export.load_classifier(<this folder>)` does all of the above.",
    ]


def model_card(info: dict[str, Any]) -> str:
    """The card a person reads before using the adapter: the facts that decide whether it fits their use
    (task, base, split, ranks, metrics) and the lines that load it, with what they must know about the
    base (`base_note`, e.g. weights that differ from the hub's) right under those lines."""
    note = [f"> **Note on the base:** {info['base_note']}", ""] if info.get("base_note") else []
    sections = [
        *_front_matter(info),
        *_summary(info),
        "",
        *_facts(info),
        "",
        "## Metrics",
        "",
        *_metrics_lines(info),
        "",
        "## Use",
        "",
        *_usage(info),
        "",
        *note,
    ]
    return "\n".join(sections)

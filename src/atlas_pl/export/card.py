"""The README.md model card of an exported client: what it was trained for, how well, and how to load it.

Written from the export's own record (atlas_export.json), so the card and the machine-readable facts
cannot disagree. The front matter is the Hugging Face hub's model-card metadata.
"""

from __future__ import annotations

from typing import Any

_METRICS = ("primary", "accuracy", "f1", "mcc", "loss")


def _span(start: int, stop: int) -> str:
    return str(start) if stop - start == 1 else f"{start}-{stop - 1}"


def _metrics_lines(info: dict[str, Any]) -> list[str]:
    metrics = info.get("metrics") or {}
    shown = [f"| {name} | {metrics[name]:.4f} |" for name in _METRICS if isinstance(metrics.get(name), float)]
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
    base = info["base"]
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
    ranks = info["ranks"]
    front = ["---", "library_name: peft", "pipeline_tag: text-classification"]
    if info.get("base_hub_id"):
        front.append(f"base_model: {info['base_hub_id']}")
    front += ["tags: [atlas_pl, lora, federated-learning, split-learning]", "---", ""]
    central = info["ablation"] == "centralized"
    who = "the centralized baseline" if central else f"client {info['client']} of a federated job"
    split = (
        "none: trained centrally on every client's data, one adapter shared by all tasks"
        if central
        else f"{info['split']}: blocks {_span(0, info['split'])} trained on the client, "
        f"{_span(info['split'], len(ranks))} on the server (SFL-V1), joined here"
    )
    lines = [
        *front,
        f"# atlas_pl {'centralized model' if central else 'client ' + info['client']}: "
        f"{info['task'] or 'task unknown'}",
        "",
        f"A LoRA adapter and task head trained with atlas_pl for {who} (ablation `{info['ablation']}`"
        + (f", eta {info['eta']}" if info.get("eta") is not None else "")
        + f"), exported from checkpoint round {info['round']}.",
        "",
        "| | |",
        "|---|---|",
        f"| task | {info['task'] or 'unknown'} (labels: {', '.join(info['labels'])}) |",
        f"| base model | {info['model']} (`{info['base']}`) |",
        f"| split point | {split} |",
        f"| LoRA ranks per block | {', '.join(str(r) for r in ranks)} (alpha {info['alpha']:g}) |",
        f"| LoRA targets | {', '.join(info['targets'])} |",
        f"| cluster | {info['cluster'] if info.get('cluster') is not None else 'n/a'} |",
        f"| device profile | {info.get('device') or 'n/a'} |",
        f"| job | `{info['job_dir']}` |",
        "",
        "## Metrics",
        "",
        *_metrics_lines(info),
        "",
        "## Use",
        "",
        *_usage(info),
        "",
    ]
    if info.get("base_note"):
        lines += [info["base_note"], ""]
    return "\n".join(lines)

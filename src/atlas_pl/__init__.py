"""atlas_pl: federated multi-task split-LoRA fine-tuning (ATLAS) as a Hydra + Lightning framework.

The package root stays import-light on purpose: `python -m atlas_pl --help` must answer before torch,
transformers or Lightning are imported.
"""

__version__ = "0.1.0"

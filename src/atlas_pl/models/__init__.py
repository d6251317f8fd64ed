"""Model registry, the split backbone over one shared frozen base, and per-client LoRA adapters.

Import the submodules directly (`atlas_pl.models.catalog` is torch-free and used by config validation).
"""

"""atlas_pl's Hydra configs, shipped as package data (found with importlib.resources, see __main__.py).

This file makes the folder an importable module, which Hydra needs for `pkg://atlas_pl.conf`: a user's
own primary config can list `hydra.searchpath: [pkg://atlas_pl.conf]` to build on these groups, and a
notebook can call `hydra.initialize_config_module("atlas_pl.conf")`.
"""

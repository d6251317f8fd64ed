"""atlas_pl's Hydra launcher plugin: one fresh process per sweep job (used by `hydra/launcher=joblib`).

Hydra only instantiates launchers found under the `hydra_plugins` namespace package, hence this location.
"""

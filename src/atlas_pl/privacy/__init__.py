"""Privacy evaluation: what leaves a client, attacked and measured (DESIGN.md §11).

`python -m atlas_pl.privacy` runs the inversion attacks on the activations a client half sends and the
label attack on its Phase 1 sketch; `privacy.activation_noise` in the training config is the defense.
"""

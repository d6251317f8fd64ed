"""The Lightning layer (DESIGN.md §1): client/server LightningModules, the orchestrator Callback that
calls the coordinator between rounds, and the one Trainer builder. Thin by design: no party's maths."""

"""Engines: who runs the parties and over what. `inprocess` runs every party in this process, clients
one after another; `centralized` is the upper-bound pipeline (one model on the union of the data)."""

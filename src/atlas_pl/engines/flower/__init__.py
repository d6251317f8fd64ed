"""engine=flower: the federation's parties behind Flower 1.42's Message API (DESIGN.md §12).

`server.py` is the ServerApp's side (the coordinator and its records, clients reached through a Grid),
`client.py` one client party with its own server half, rebuilt from its node's state for each message,
`codec.py` what the messages carry, `simulation.py` the Ray simulation a CLI job starts, `app.py` the
apps `flwr run` loads. Nothing here imports flwr at package import: the extra stays optional.
"""

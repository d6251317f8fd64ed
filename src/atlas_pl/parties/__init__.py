"""What each party of the federation does, given typed settings and messages (DESIGN.md §1).

A client (fingerprint, train a round over a split link, apply an update, evaluate), a host of server
halves (the server today, a peer device later) and the coordinator (cluster, allocate, aggregate). No
party knows which engine runs it or over what transport: a client reaches its server half only through
a `SplitLink`, and the coordinator sees plain tensor dicts, never live modules.
"""

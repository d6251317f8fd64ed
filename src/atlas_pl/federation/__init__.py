"""Building and running the simulated federation (the thin layer over the pure phase functions)."""

"""Pure phase functions (no Lightning): fingerprinting, clustering, allocation, aggregation, Laplacian."""

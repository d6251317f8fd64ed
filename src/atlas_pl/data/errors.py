"""The one exception type of the data layer."""

from __future__ import annotations

from atlas_pl.errors import AtlasError


class DataError(AtlasError, ValueError):
    """Bad data, a bad data argument or a missing data file.

    A ValueError subclass so callers that validate configs can catch one type, and the message always
    names the file / argument at fault and what was expected, because the person reading it is usually
    looking at a config or a TSV, not at this code.
    """

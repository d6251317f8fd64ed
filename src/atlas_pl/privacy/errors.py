"""The privacy evaluation's user errors: a bad request is refused before any model is loaded."""

from __future__ import annotations

from atlas_pl.errors import AtlasError


class PrivacyConfigError(AtlasError, ValueError):
    """A privacy setting, job directory or model that the evaluation cannot use, and why."""

"""One exception family for everything a user can get wrong.

Every message says what went wrong *and* how to fix it; the CLI prints ``str(err)``
without a traceback. Subclasses exist so callers can catch one kind of failure, never
to carry different formatting.
"""

from __future__ import annotations


class EdgeweaveError(Exception):
    """Base class: a user-facing failure whose message includes the fix."""


class ModelNotFoundError(EdgeweaveError):
    """An unknown model name or a path that is not a model."""


class CheckpointError(EdgeweaveError):
    """A model file exists but cannot be read (truncated, corrupt, unsupported)."""


class GenerationError(EdgeweaveError):
    """Bad generation input: empty prompt, non-positive max tokens, bad sampling values."""


class ConfigError(EdgeweaveError):
    """An invalid configuration value (recipe, fleet, plan, option)."""


class ArtifactError(EdgeweaveError):
    """A compression artifact is missing, tampered with or inconsistent with its manifest."""


class PlanningError(EdgeweaveError):
    """No feasible plan: the model fits nowhere, the fleet graph is disconnected, ..."""


class RuntimeStageError(EdgeweaveError):
    """A stage or node failed in a way the user must act on."""


class StoreError(EdgeweaveError):
    """The demonstration database cannot be used: not SQLite, not a store's schema, damaged
    rows, or a write the database refused."""

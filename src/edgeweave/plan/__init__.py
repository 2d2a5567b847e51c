"""Planning (pure functions over frozen types): fleets, the optimal partitioner, baselines,
runtime adaptation. ``place`` is the entry point."""

from edgeweave.plan.partition import OBJECTIVES, place

__all__ = ["OBJECTIVES", "place"]

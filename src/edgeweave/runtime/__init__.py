"""Running models: stage engines, the generation loop, stages on nodes, transport and the coordinator."""

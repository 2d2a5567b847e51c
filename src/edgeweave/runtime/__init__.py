"""Running models: engines, generation loop, (later) stages, transport and coordinator."""

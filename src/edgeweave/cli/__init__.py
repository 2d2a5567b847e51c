"""One Typer app; one module per verb, each exposing ``register(app)``."""

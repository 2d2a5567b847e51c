"""OpenAI-compatible HTTP serving: ``create_app(backend, config)`` over a SessionFactory.

Import the pieces from their modules (``edgeweave.serve.app``, ``.backend``, ``.config``,
``.server``); this package stays light so ``import edgeweave`` never pulls FastAPI.
"""

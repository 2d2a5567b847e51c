"""OpenAI-compatible HTTP serving: ``create_app(backend, config)`` over a SessionFactory.

Import the pieces from their modules (``edgeweave.serve.app``, ``.backend``, ``.config``,
``.server``); this package stays light so ``import edgeweave`` never pulls FastAPI.
"""

from edgeweave._callable import make_callable

make_callable(__name__, "edgeweave.serve.server:serve")  # ew.serve(model, port=...)

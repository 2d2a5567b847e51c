"""The app's endpoints, one module per family, each a router built over the app's
:class:`~edgeweave.serve.state.AppState` (``create_app`` includes them in this order):

* ``health``: ``/health`` (public) and ``/metrics`` (behind the keys);
* ``docs``: the API description (``/openapi.json``, ``/docs``, ``/redoc``), behind the keys;
* ``models``: ``/v1/models`` and ``/v1/models/{name}``;
* ``embeddings``: ``/v1/embeddings``;
* ``generation``: ``/v1/chat/completions`` and ``/v1/completions``, which run their jobs
  through ``jobs`` (submit, then relay the scheduler's events as JSON or server-sent events).

``keys`` is the API-key check they share. Endpoint functions carry no docstrings: FastAPI
would publish them in the API description.
"""

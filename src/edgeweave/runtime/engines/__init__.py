"""Stage engines: one file per backend, all with the :class:`LogitsEngine` shape."""

"""What one app's handlers share: the backend, its limits, the live jobs and the scheduler.

``create_app`` builds one :class:`AppState` and hands it to every router; the lifespan
starts its scheduler thread and stops it. Nothing here speaks HTTP: the routers turn its
exceptions (:class:`~edgeweave.serve.scheduler.Busy`) into responses.
"""

from __future__ import annotations

import threading
import time

from edgeweave.errors import ConfigError
from edgeweave.models.tokenizer import Tokenizer
from edgeweave.runtime.generate import GenerationResponse
from edgeweave.serve.backend import SessionFactory
from edgeweave.serve.config import ServeConfig
from edgeweave.serve.embeddings import Embedder, embeddings_available
from edgeweave.serve.metrics import ServeMetrics
from edgeweave.serve.scheduler import Busy, Job, Scheduler


def max_token_chars(tokenizer: Tokenizer) -> int:
    """An upper bound on the characters one token stands for: its longest decoded token.

    A prompt longer than ``max_prompt_tokens`` times this cannot fit and is refused before
    tokenizing: ``tokenizers`` holds the GIL while it encodes, so even off the event loop a
    long prompt stalls every other client (a 1.2 MB prompt held it 0.75 s). 0.1 s for
    SmolLM2's 49 k tokens, once; its longest token is 81 characters.
    """
    longest = max((len(tokenizer.decode([i], skip_special_tokens=False))
                   for i in range(tokenizer.vocab_size)), default=1)
    return longest + 1  # a decoder may drop a token's leading space when it stands alone


class AppState:
    """One served backend: the names it answers to, its metrics and the jobs it runs.

    ``generative`` are the names ``/v1/chat/completions`` and ``/v1/completions`` take (the
    model, then its LoRA adapters, listed beside it as vLLM's ``--lora-modules`` are);
    ``served`` adds the embedding model when there is one.
    """

    def __init__(self, backend: SessionFactory, config: ServeConfig) -> None:
        self.backend = backend
        self.config = config
        self.model_id = config.model_id or backend.model_id
        self.started = int(time.time())
        self.scheduler: Scheduler | None = None  # from the lifespan's start to its end
        # accepted jobs until they finish: running once their session exists, else waiting
        self._live: set[Job] = set()
        self._live_lock = threading.Lock()
        self.metrics = ServeMetrics(self.active, self.load, backend.cache_usage)
        self.embedder = Embedder() if config.embeddings and embeddings_available() else None
        self.adapters = dict(backend.adapters)
        if self.model_id in self.adapters:
            raise ConfigError(f"the model is served as {self.model_id!r}, which is also an "
                              "adapter's name: give the adapter another name")
        self.generative = [self.model_id, *self.adapters]
        self.served = [*self.generative,
                       *([self.embedder.name] if self.embedder is not None else [])]
        self.max_prompt_chars = config.max_prompt_tokens * max_token_chars(backend.tokenizer)

    def runtime(self) -> dict[str, str]:
        """Backend and variant, asked each time: a plan's stages change on failover."""
        return self.backend.engine_info()

    def active(self) -> int:
        return self.scheduler.active if self.scheduler else 0

    def load(self) -> tuple[int, int]:
        """Live jobs as (running, waiting)."""
        with self._live_lock:
            running = sum(1 for j in self._live if j.started is not None)
            return running, len(self._live) - running

    def start(self) -> None:
        self.scheduler = Scheduler(self.backend, self.config.max_concurrent, self._finished,
                                   on_step=self.metrics.observe_batch)

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()

    def submit(self, job: Job) -> None:
        """Hand ``job`` to the scheduler; it stays live until it finishes. Raises
        :class:`~edgeweave.serve.scheduler.Busy` (and forgets the job) when it is full."""
        if self.scheduler is None:  # as the scheduler says once stopped
            raise Busy("the server is not running: serve the app under its lifespan "
                       "(uvicorn, or FastAPI's TestClient in a with block)")
        with self._live_lock:
            self._live.add(job)
        try:
            self.scheduler.submit(job)
        except Busy:
            with self._live_lock:
                self._live.discard(job)
            raise

    def _finished(self, job: Job, last: GenerationResponse | None) -> None:
        with self._live_lock:
            self._live.discard(job)
        if last is not None and job.started is not None:
            self.metrics.observe(job.tag, last.finish_reason or "length",
                                 last.metrics, job.started - job.arrived)

"""Embedded simulation: N Flower ``ClientApp`` s in this process behind a Flower ``Grid``.

``LocalGrid`` implements Flower's ``Grid`` interface (push/pull/send_and_receive of
Message API objects) over a thread pool instead of a SuperLink, so the very strategy and
ClientApp that run in deployment run here unchanged, without Ray. A client that never
answers is left behind when the round's ``timeout`` expires, exactly as with a SuperLink.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

_RUN_IDS = itertools.count(1)


def make_local_grid(client_apps: dict[int, Any], node_configs: dict[int, dict],
                    run_config: dict, workers: int = 1):
    """A ``Grid`` whose nodes are ``client_apps`` ``{node_id: ClientApp}`` in-process."""
    from flwr.app import Context, Error, Message, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.serverapp import Grid
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity

    class LocalGrid(Grid):
        def __init__(self) -> None:
            self._run = Run.create_empty(next(_RUN_IDS))
            # Messages stamp themselves with the sending task's identity; here the server
            # side is this process, as it would be the ServerApp process in deployment.
            TaskIdentity.run_id = self._run.run_id
            TaskIdentity.node_id = SUPERLINK_NODE_ID
            TaskIdentity.task_id = 0
            self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="client")
            self._futures: dict[str, Future] = {}
            self._contexts = {
                n: Context(run_id=self._run.run_id, node_id=n, node_config=dict(node_configs[n]),
                           state=RecordDict(), run_config=dict(run_config))
                for n in client_apps}
            self._lock = threading.Lock()

        def context(self, node: int) -> Context:
            """The node's Flower context (its ``state`` persists across rounds, as on a
            SuperNode)."""
            return self._contexts[node]

        def set_run(self, run: Run) -> None:
            self._run = run

        @property
        def run(self) -> Run:
            return self._run

        def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
            return Message(content, dst_node_id=dst_node_id, message_type=message_type,
                           group_id=group_id, ttl=ttl)

        def get_node_ids(self) -> Iterable[int]:
            return list(client_apps)

        def _call(self, msg: Message) -> Message:
            node = msg.metadata.dst_node_id
            try:
                return client_apps[node](msg, self._contexts[node])
            except Exception as e:  # a crashing client is an error reply, not a crash
                return Message(Error(code=1, reason=f"{type(e).__name__}: {e}"), reply_to=msg)

        def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
            ids = []
            for msg in messages:
                if msg.metadata.dst_node_id not in client_apps:
                    raise ValueError(f"unknown node {msg.metadata.dst_node_id}")
                mid = uuid.uuid4().hex
                msg.metadata.__dict__["_message_id"] = mid  # what a SuperLink would assign
                msg.metadata.__dict__["_run_id"] = self._run.run_id
                with self._lock:
                    self._futures[mid] = self._pool.submit(self._call, msg)
                ids.append(mid)
            return ids

        def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
            out = []
            with self._lock:
                for mid in message_ids:
                    fut = self._futures.get(mid)
                    if fut is not None and fut.done():
                        out.append(fut.result())
                        del self._futures[mid]
            return out

        def send_and_receive(self, messages: Iterable[Message], *,
                             timeout: float | None = None) -> Iterable[Message]:
            ids = list(self.push_messages(messages))
            with self._lock:
                futs = [self._futures[m] for m in ids]
            wait(futs, timeout=timeout)
            return self.pull_messages(ids)

        def shutdown(self) -> None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    return LocalGrid()

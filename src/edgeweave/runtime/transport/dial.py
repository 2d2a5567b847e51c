"""Dial a node: gRPC first, then its frame socket when it announces one.

A node serves its frames on gRPC and, beside it, on a plain length-prefixed TCP socket
(``frame_socket``) that costs a third of gRPC's per-frame time in Python. The fleet knows a
node by its gRPC address; INFO tells the port of the socket, on the same host. A node that
announces none (an older build, or ``--frames-port -1``), or whose socket cannot be
reached (a firewall that passes the gRPC port only), keeps the gRPC link.
"""

from __future__ import annotations

import logging
from typing import Any

from edgeweave.netaddr import split_hostport
from edgeweave.runtime.transport.base import Link, StageUnavailable
from edgeweave.runtime.transport.frame import Frame, Op
from edgeweave.runtime.transport.grpc_link import GrpcLink

log = logging.getLogger(__name__)


def node_info(link: Link, timeout: float) -> dict[str, Any]:
    """What the node behind ``link`` says of itself in INFO ({} if it says nothing)."""
    resp = link.call(Frame(Op.INFO), timeout)
    info = resp.json() if resp.op == Op.OK else None
    return info if isinstance(info, dict) else {}


def frames_port(info: dict[str, Any]) -> int | None:
    """The frame socket's port a node announces in its INFO (``node_info``), or None."""
    port = info.get("frames_port")
    return port if isinstance(port, int) and 0 < port < 65536 else None


# what builds from before the announcement answer with (they know no ``top1``)
UNANNOUNCED_REPLY_CODECS = ("fp32", "fp16", "int8", "top64")


def reply_codecs(info: dict[str, Any]) -> tuple[str, ...]:
    """The reply codecs a node announces in INFO (an older build announces none)."""
    names = info.get("reply_codecs")
    if not isinstance(names, list):
        return UNANNOUNCED_REPLY_CODECS
    return tuple(str(n) for n in names)


def dial(address: str, tls: Any = None, connect_timeout: float = 10.0) -> Link:
    """The fastest link to the node at ``address`` (``host:port`` of its gRPC server);
    raises ``StageUnavailable`` when it cannot be reached."""
    from edgeweave.runtime.transport.frame_socket import SocketLink

    link: GrpcLink | SocketLink = GrpcLink(address, tls, connect_timeout)
    info = node_info(link, connect_timeout)
    port = frames_port(info)
    split = split_hostport(address)
    if port is not None and split is not None:
        try:
            fast = SocketLink(address, split[0], port, tls, connect_timeout)
        except StageUnavailable as e:  # a firewall that lets the gRPC port through only
            log.warning("%s; staying on gRPC", e)
        else:
            link.close()
            link = fast
    # a coordinator asks a node only for the reply codecs its build knows (a fleet in the
    # middle of an upgrade keeps answering greedy requests)
    link.reply_codecs = reply_codecs(info)
    return link

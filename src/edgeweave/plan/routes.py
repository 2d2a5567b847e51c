"""Fastest routes of one payload over a fleet's link graph, computed where they are needed.

A route's time is the sum over its links of ``latency + bytes * 8 / rate``, so which route is
fastest depends on the payload: one :class:`Routes` per payload size. Nothing here is an
``n x n`` array: the planner asks for the rows it uses (a single-source Dijkstra from a device
it is expanding, cached) and for one kind of aggregate the dynamic programme needs,
``nearest(U)[d] = min over d2 != d of (time(d -> d2) + U[d2])``, which two multi-source
Dijkstra runs answer exactly for all ``d`` at once (see :meth:`Routes.nearest`). On a
10,000-device fleet that is milliseconds and megabytes where the all-pairs table it replaces
(Floyd-Warshall, 8 payloads) was minutes and gigabytes.

Energy is the energy of the fastest route (what the traffic actually spends), accumulated
along the shortest-path tree. ``nearest`` on energy uses the least-energy graph instead,
a lower bound of it, which is all the planner's bound needs.
"""

from __future__ import annotations

import numpy as np

from edgeweave.types import Fleet

INF = float("inf")


def _csgraph():  # scipy loads in ~0.1 s: only when a plan is searched
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    return csr_matrix, dijkstra


class LinkGraph:
    """The directed links of a fleet as arrays: for each direction, latency, seconds per byte
    and energy per byte (parallel links are kept; each payload picks its faster one)."""

    def __init__(self, fleet: Fleet, ids: list[str], keep: np.ndarray | None = None) -> None:
        """``keep`` (n,) bool: only links between two kept devices (a zone's own network)."""
        idx = {d: k for k, d in enumerate(ids)}
        src, dst, lat, spb, epb = [], [], [], [], []
        for ln in fleet.links:
            if ln.a not in idx or ln.b not in idx:
                continue
            if keep is not None and not (keep[idx[ln.a]] and keep[idx[ln.b]]):
                continue
            a, b = idx[ln.a], idx[ln.b]
            p = ln.profile
            for s, t, bps in ((a, b, p.up_bps), (b, a, p.down_bps)):
                src.append(s)
                dst.append(t)
                lat.append(p.latency_s)
                spb.append(8.0 / (bps * ln.bandwidth_scale))
                epb.append(p.energy_per_byte_j)
        self.n = len(ids)
        self.src = np.array(src, dtype=np.int64)
        self.dst = np.array(dst, dtype=np.int64)
        self.lat = np.array(lat, dtype=float)
        self.spb = np.array(spb, dtype=float)
        self.epb = np.array(epb, dtype=float)


class Routes:
    """Fastest routes for a payload of ``nbytes`` bytes (see the module docstring)."""

    def __init__(self, graph: LinkGraph, nbytes: float) -> None:
        self.g, self.nbytes = graph, float(nbytes)
        g = graph
        t = g.lat + nbytes * g.spb
        e = nbytes * g.epb
        # one edge per ordered pair: the faster parallel link (and its energy)
        order = np.lexsort((t, g.dst, g.src))
        s, d = g.src[order], g.dst[order]
        first = np.ones(len(s), dtype=bool)
        first[1:] = (s[1:] != s[:-1]) | (d[1:] != d[:-1])
        self.s, self.d, self.t, self.e = s[first], d[first], t[order][first], e[order][first]
        # the least energy over parallel links, for the energy lower bound
        eo = np.lexsort((e, g.dst, g.src))
        fe = np.ones(len(eo), dtype=bool)
        fe[1:] = (g.src[eo][1:] != g.src[eo][:-1]) | (g.dst[eo][1:] != g.dst[eo][:-1])
        self.e_min = (g.src[eo][fe], g.dst[eo][fe], e[eo][fe])
        csr, _ = _csgraph()
        n = g.n
        self.fwd = csr((self.t, (self.s, self.d)), shape=(n, n))
        self.rev = csr((self.t, (self.d, self.s)), shape=(n, n))
        self.energy = csr((self.e, (self.s, self.d)), shape=(n, n))
        self._rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._cols: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    # -- single source / single target ---------------------------------------------------
    def row(self, src: int) -> tuple[np.ndarray, np.ndarray]:
        """(time, energy) from ``src`` to every device (inf where unreachable)."""
        if src not in self._rows:
            _, dijkstra = _csgraph()
            dist, pred = dijkstra(self.fwd, indices=src, return_predecessors=True)
            # energy of the parent edge pred[v] -> v, summed up the tree
            e = self._along(pred, lambda p, v: (p, v))
            self._rows[src] = (dist, np.where(np.isfinite(dist), e, INF))
        return self._rows[src]

    def col(self, dst: int) -> tuple[np.ndarray, np.ndarray]:
        """(time, energy) from every device to ``dst``."""
        if dst not in self._cols:
            _, dijkstra = _csgraph()
            dist, pred = dijkstra(self.rev, indices=dst, return_predecessors=True)
            # in the reversed tree pred[v] is v's next hop towards dst: edge v -> pred[v]
            e = self._along(pred, lambda p, v: (v, p))
            self._cols[dst] = (dist, np.where(np.isfinite(dist), e, INF))
        return self._cols[dst]

    def pair(self, a: int, b: int) -> tuple[float, float]:
        if a == b:
            return 0.0, 0.0
        if b in self._cols and a not in self._rows:
            t, e = self._cols[b]
            return float(t[a]), float(e[a])
        t, e = self.row(a)
        return float(t[b]), float(e[b])

    def _along(self, pred: np.ndarray, edge) -> np.ndarray:
        """Sum of each tree edge's energy from the root down to every node (pointer jumping:
        log(depth) vectorised steps, not a Python loop over devices)."""
        n = len(pred)
        has = pred >= 0
        acc = np.zeros(n)
        v = np.flatnonzero(has)
        if v.size:
            a, b = edge(pred[v], v)
            acc[v] = np.asarray(self.energy[a, b]).ravel()
        anc = np.where(has, pred, -1)
        while (anc >= 0).any():
            m = anc >= 0
            up = anc[m]
            acc = acc.copy()
            acc[m] += acc[up]
            anc = anc.copy()
            anc[m] = anc[up]
        return acc

    # -- the dynamic programme's aggregate ----------------------------------------------
    def min_out(self, metric: str = "time") -> np.ndarray:
        """(n,) the cheapest route from each device to any other one: its cheapest outgoing
        link (every route starts with one, and each neighbour is itself a destination)."""
        out = np.full(self.g.n, INF)
        if metric == "time":
            np.minimum.at(out, self.s, self.t)
        else:
            s, _, e = self.e_min
            np.minimum.at(out, s, e)
        return out

    def nearest(self, U: np.ndarray, metric: str = "time") -> np.ndarray:
        """(n,) ``min over d2 != d of cost(d -> d2) + U[d2]`` for every device ``d``.

        Reversed graph plus a super-source joined to every ``d2`` with weight ``U[d2]``: one
        Dijkstra gives the best value and which ``d2`` it came from (its origin). A device
        that is its own origin needs the best path from another origin, which ends with an
        edge entering its origin cell (the devices sharing its origin) from outside, or
        starts at another source inside the cell, and then stays in the cell: a second
        Dijkstra restricted to intra-cell edges, seeded with those candidates, gives it.
        Exact, with no pair table; ``metric="energy"`` runs on least-energy links (a lower
        bound of the fastest route's energy)."""
        n = self.g.n
        if metric == "time":
            s, d, w = self.s, self.d, self.t
        else:
            s, d, w = self.e_min
        rs, rd = d, s  # reversed edges: rs -> rd costs w (the hop rd -> rs)
        ok = np.isfinite(U)
        if not ok.any():
            return np.full(n, INF)
        srcs = np.flatnonzero(ok)
        dist, org = self._multi(rs, rd, w, srcs, U[srcs], n)
        out = dist.copy()
        own = org == np.arange(n)
        if own.any():
            reach = org >= 0
            # seeds: another source inside the cell, or an edge from another cell
            pot = np.where(ok & reach & ~own, U, INF)
            cross = reach[rs] & reach[rd] & (org[rs] != org[rd])
            if cross.any():
                np.minimum.at(pot, rd[cross], dist[rs[cross]] + w[cross])
            inner = reach[rs] & reach[rd] & (org[rs] == org[rd])
            seeds = np.flatnonzero(np.isfinite(pot))
            if seeds.size:
                d2, _ = self._multi(rs[inner], rd[inner], w[inner], seeds, pot[seeds], n)
                out[own] = d2[own]
            else:
                out[own] = INF
        return out

    def _multi(self, rs: np.ndarray, rd: np.ndarray, w: np.ndarray, srcs: np.ndarray,
               pot: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Dijkstra from a super-source (node ``n``) with edges to ``srcs`` of weight ``pot``:
        (distance, origin source, -1 where unreachable). Edges are unique per ordered pair
        (the constructor kept one per pair), so the CSR is assembled directly: no sort."""
        csr, dijkstra = _csgraph()
        order = np.argsort(rs, kind="stable")
        indptr = np.zeros(n + 2, dtype=np.int64)
        np.cumsum(np.bincount(rs, minlength=n), out=indptr[1:n + 1])
        indptr[n + 1] = indptr[n] + len(srcs)
        # scipy would drop an explicit zero weight: a tiny floor keeps zero-cost seeds
        data = np.concatenate([w[order], np.maximum(pot, 1e-300)])
        g = csr((data, np.concatenate([rd[order], srcs]), indptr), shape=(n + 1, n + 1))
        dist, pred = dijkstra(g, indices=n, return_predecessors=True)
        dist, pred = dist[:n], pred[:n]
        root = np.arange(n)
        par = np.where((pred >= 0) & (pred != n), pred, root)  # sources and strays: themselves
        while True:  # pointer jumping to the source each path starts from
            nxt = par[par]
            if np.array_equal(nxt, par):
                break
            par = nxt
        org = np.where(np.isfinite(dist), par, -1)
        return dist, org


__all__ = ["INF", "LinkGraph", "Routes"]

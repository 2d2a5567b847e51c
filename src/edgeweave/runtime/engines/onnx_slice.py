"""A stage's ONNX graph cut from a cached export of a wider block range, without torch.

A re-plan moves stage boundaries (a node joins, one leaves, the planner improves), and every
new ``[start, end)`` used to mean a fresh export: a child process importing torch, loading
the weights and building the graph, 10-40 s on a small device. But ``onnx_export`` builds
every block the same way whatever the stage: nodes and weights named ``layers.<i>...``,
cache inputs ``past_key_<i>`` by global block index, the embedding before the first block
and the head after the last. So the graph of ``[start, end)`` is the graph of any cached
``[c, d)`` with ``c <= start`` and ``end <= d`` with the other blocks taken out, and two
seams made the way the exporter makes them:

* a cut before block ``start`` (``start > c``): that block's first norm reads the
  ``hidden_states`` input with exact zeros as its skip (``SkipSimplifiedLayerNormalization``
  still, the kernel the wider graph runs there: a plain ``SimplifiedLayerNormalization``
  rounds differently) instead of adding the previous block's pending output to the residual,
  and the residual stream starts at the input;
* a cut after block ``end - 1`` (``end < d``): ``hidden_states_out`` is the sum of the pending
  output and the residual that block ``end``'s first norm would have added.

The weights are copied byte for byte from the wider export's data file, so the cut graph
computes what the exporter's own graph of ``[start, end)`` computes (tested against it). It
takes well under a second and needs only ``onnx`` (protobuf), which every node has.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from edgeweave.errors import RuntimeStageError
from edgeweave.runtime.engines.onnx_spec import SEAM_ZERO

_RANGE = re.compile(r"(\d+)-(\d+)")


def covering_exports(variant_dir: Path, start: int, end: int) -> list[tuple[int, int, Path]]:
    """Cached exports ``(c, d, folder)`` in ``variant_dir`` whose block range holds
    ``[start, end)`` (not the range itself), narrowest first: the least to read."""
    found = []
    if not variant_dir.is_dir():
        return found
    for folder in variant_dir.iterdir():
        m = _RANGE.fullmatch(folder.name)
        if m is None:  # LoRA twins ("+lora") and temporary folders of a build in flight
            continue
        c, d = int(m[1]), int(m[2])
        if c <= start and end <= d and (c, d) != (start, end):
            found.append((c, d, folder))
    return sorted(found, key=lambda t: t[1] - t[0])


def same_export(manifest: dict[str, Any], want: dict[str, Any]) -> bool:
    """``manifest`` (of a wider export) was built as ``want`` asks but for its block range:
    same source, recipe, versions and spec apart from ``start``/``end``."""
    for k, v in want.items():
        if k == "spec":
            have = dict(manifest.get("spec") or {})
            if {**have, "start": 0, "end": 0} != {**v, "start": 0, "end": 0}:
                return False
        elif manifest.get(k) != v:
            return False
    return True


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def _layer(name: str) -> int | None:
    """The block a node or tensor of the exporter's graph belongs to (None: outside)."""
    if not name.startswith("layers."):
        return None
    digits = name[len("layers."):].split(".", 1)[0].split("/", 1)[0]
    return int(digits) if digits.isdigit() else None


def _keep(node: Any, start: int, end: int, first: bool, src_end: int) -> bool:
    i = _layer(node.name)
    if i is not None:
        return start <= i < end
    if node.name.startswith("embed_tokens"):
        return first
    # the wider graph's own output seam (residual/out) or head (last/*, norm, lm_head/*,
    # softcap/*, logits): only where the stage ends where the wider graph does
    return end == src_end


def slice_export(source: Path, start: int, end: int, n_layers: int) -> Any:
    """The ``onnx.ModelProto`` of blocks ``[start, end)`` cut from the export in ``source``
    (a folder with ``model.onnx`` and its data file, covering the range), weights inline
    (``onnx_cache.save`` writes them out again)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(source / "model.onnx"), load_external_data=False)
    g = model.graph
    src_start, src_end = _range_of(g)
    if not (src_start <= start < end <= src_end):
        raise RuntimeStageError(f"the export in {source} holds blocks [{src_start}, {src_end}), "
                                f"not [{start}, {end})")
    first = start == 0
    by_name = {n.name: n for n in g.node}
    nodes = []
    for node in g.node:
        if not _keep(node, start, end, first, src_end):
            continue
        if node.name == f"layers.{start}/ln1" and start > src_start:
            nodes.extend(_input_seam(node, helper))
        else:
            nodes.append(node)
    hidden = _hidden_size(model)
    inputs = [vi for vi in g.input if _keep_io(vi.name, start, end, src_start, src_end)]
    outputs = [vi for vi in g.output if _keep_io(vi.name, start, end, src_start, src_end)]
    if start > src_start:
        inputs.insert(0, helper.make_tensor_value_info(
            "hidden_states", TensorProto.FLOAT, ["batch", "seq", hidden]))
    if end < src_end:
        seam = by_name.get(f"layers.{end}/ln1")
        if seam is None or seam.op_type != "SkipSimplifiedLayerNormalization":
            raise RuntimeStageError(f"cannot cut the export in {source} after block {end - 1}: "
                                    "its graph is not the exporter's layout; rebuild it")
        nodes.append(helper.make_node("Add", [seam.input[0], seam.input[1]],
                                      ["hidden_states_out"], name="residual/out"))
        outputs.insert(0, helper.make_tensor_value_info(
            "hidden_states_out", TensorProto.FLOAT, ["batch", "seq", hidden]))
    used = {name for n in nodes for name in n.input}
    inits = [_inline(t, source) for t in g.initializer if t.name in used]
    if SEAM_ZERO in used and all(t.name != SEAM_ZERO for t in inits):
        from onnx import numpy_helper

        inits.append(numpy_helper.from_array(np.array(0, np.float32), SEAM_ZERO))
    # an overridable initializer (``last.starts`` of the head) goes with its nodes: left as
    # an input without its initializer it would become one the runs must feed
    dropped = {t.name for t in g.initializer if t.name not in used}
    inputs = [vi for vi in inputs if vi.name not in dropped]
    graph = helper.make_graph(nodes, f"edgeweave_stage_{start}_{end}", inputs, outputs, inits)
    out = helper.make_model(graph, opset_imports=list(model.opset_import),
                            producer_name=model.producer_name)
    out.ir_version = model.ir_version
    return out


def _input_seam(node: Any, helper: Any) -> list[Any]:
    """Block ``start``'s first norm, reading the stage input as the exporter builds it: the
    same fused kernel with exact zeros as the skip, so the stage input's norm and residual
    are bit for bit what the wider graph computed there."""
    pending, residual, weight = node.input[:3]
    del pending, residual  # from the blocks cut away
    block = node.name.rsplit("/", 1)[0]
    zeros = helper.make_node("Mul", ["hidden_states", SEAM_ZERO], [f"{block}/zeros/out0"],
                             name=f"{block}/zeros")
    norm = helper.make_node(node.op_type, ["hidden_states", zeros.output[0], weight],
                            list(node.output), name=node.name, domain=node.domain)
    norm.attribute.extend(node.attribute)
    return [zeros, norm]


def _keep_io(name: str, start: int, end: int, src_start: int, src_end: int) -> bool:
    m = re.fullmatch(r"(?:past|present)_(?:key|value)_(\d+)", name)
    if m is not None:
        return start <= int(m[1]) < end
    if name in ("input_ids", "hidden_states"):  # the wider graph's input: if it starts here
        return start == src_start
    if name in ("logits", "hidden_states_out"):  # its output: if it ends here
        return end == src_end
    return True  # seqlens_k, total_sequence_length


def _range_of(graph: Any) -> tuple[int, int]:
    blocks = [int(m[1]) for vi in graph.input
              if (m := re.fullmatch(r"past_key_(\d+)", vi.name))]
    return min(blocks), max(blocks) + 1


def _hidden_size(model: Any) -> int:
    for vi in [*model.graph.input, *model.graph.output]:
        if vi.name in ("hidden_states", "hidden_states_out"):
            return int(vi.type.tensor_type.shape.dim[2].dim_value)
    for t in model.graph.initializer:  # a first stage: the width of a norm's weight
        if t.name.endswith("input_layernorm.weight"):
            return int(t.dims[0])
    raise RuntimeStageError("cannot tell the hidden size of the export: rebuild it")


def _inline(tensor: Any, folder: Path) -> Any:
    """A copy of ``tensor`` holding its bytes (read from the export's data file)."""
    from onnx import TensorProto

    if tensor.data_location != TensorProto.EXTERNAL:
        return tensor
    info = {e.key: e.value for e in tensor.external_data}
    out = TensorProto()
    out.CopyFrom(tensor)
    del out.external_data[:]
    out.data_location = TensorProto.DEFAULT
    with open(folder / info["location"], "rb") as f:
        f.seek(int(info.get("offset", 0)))
        length = int(info["length"]) if "length" in info else -1
        out.raw_data = f.read(length)
    return out

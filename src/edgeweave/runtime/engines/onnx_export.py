"""Build the ONNX graph of one stage ``[start, end)`` of a :class:`BlockModel` by hand.

Writing the graph with ``onnx.helper`` (not ``torch.onnx.export``) lets every block use the
fused kernels ONNX Runtime ships for decoder inference on CPU, the ones onnxruntime-genai
uses:

* ``SimplifiedLayerNormalization`` / ``com.microsoft.SkipSimplifiedLayerNormalization``
  (RMSNorm, with the residual add fused in),
* one fused QKV projection feeding ``com.microsoft.GroupQueryAttention`` with rotary
  embedding inside and a *preallocated* KV cache shared between ``past_*`` and ``present_*``
  (bound to the same buffer, so decode copies nothing),
* fused gate/up projection, and ``MatMul`` (fp32) or ``com.microsoft.MatMulNBits``
  (int8/int4 blocks carrying the compression artifact's scales) for every linear layer.

Graph inputs: ``input_ids`` (int64, B x T) on the first stage or ``hidden_states``
(float, B x T x H) otherwise; ``seqlens_k`` (int32, B: total length - 1);
``total_sequence_length`` (int32 scalar); ``past_key_<i>``/``past_value_<i>``
(float, B x kv x max_len x hd). Outputs: ``logits`` (B x T' x V; T' = 1 when only the last
position is asked for) on the last stage or ``hidden_states_out``; ``present_key_<i>`` ...
A last stage's graph also takes the optional ``last.starts`` (int64, [1], default -1): the
first position the head runs on, 0 for all of them (``onnx_spec.LAST_STARTS``).

``build_stage(..., lora=True)`` builds the same graph with LoRA factor inputs beside every
fused linear (``onnx_lora``): what sessions with an adapter run, while the others keep the
base graph.
"""

from __future__ import annotations

import numpy as np
import torch

from edgeweave.errors import ConfigError
from edgeweave.models.families import FAMILIES
from edgeweave.models.llama import BlockModel
from edgeweave.runtime.engines.onnx_cache import save  # noqa: F401 - where it always was
from edgeweave.runtime.engines.onnx_quant import (
    Dense,
    Packed,
    Weight,
    concat,
    rtn,
    weight_of,
)
from edgeweave.runtime.engines.onnx_spec import (  # noqa: F401 - re-exported
    EXPORTER_VERSION,
    LAST_STARTS,
    MS_OPSET,
    OPSET,
    SEAM_ZERO,
    ExportSpec,
    check_exportable,
)


class _Graph:
    """Tiny helper collecting nodes and initializers with unique names."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list = []
        self.inits: list = []
        self._shared: dict[str, str] = {}
        self._n = 0

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(self.numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, domain: str = "",
             name: str | None = None, outputs: list[str] | None = None, **attrs) -> list[str]:
        self._n += 1
        base = name or f"{op}_{self._n}"
        outs = outputs or [f"{base}/out{j}" for j in range(n_out)]
        self.nodes.append(self.helper.make_node(op, inputs, outs, name=base, domain=domain,
                                                **attrs))
        return outs

    def linear(self, x: str, w: Weight, name: str, accuracy_level: int) -> str:
        if isinstance(w, Dense):
            wt = self.init(f"{name}.weight_t", w.weight.T.astype(np.float32))
            (y,) = self.node("MatMul", [x, wt], name=f"{name}/MatMul")
        else:
            ins = [x, self.init(f"{name}.qweight", w.qweight),
                   self.init(f"{name}.scales", w.scales.reshape(-1))]
            if w.zero_points is not None:
                ins.append(self.init(f"{name}.zero_points", w.zero_points.reshape(-1)))
            (y,) = self.node("MatMulNBits", ins, domain="com.microsoft",
                             name=f"{name}/MatMulNBits", K=w.k, N=w.n, bits=w.bits,
                             block_size=w.group_size, accuracy_level=accuracy_level)
        if isinstance(w, Packed) and w.float_zeros is not None:
            # + sum_g zero[n, g] * sum_{k in g} x[k]: group sums of x, then a (G x N) product.
            # MatMulNBits' own float zero points run 50x slower (a fallback kernel); this
            # costs 3-4 small nodes per linear. Group sums by Reshape + ReduceSum measured
            # 0.77-0.80x of a symmetric graph against 0.69x with an indicator MatMul.
            if w.groups * w.group_size == w.k:
                shape = self.init(f"{name}.group_shape", np.array([0, 0, w.groups, w.group_size]))
                (xg,) = self.node("Reshape", [x, shape], name=f"{name}/GroupShape")
                (xs,) = self.node("ReduceSum", [xg, self.init(f"{name}.group_axis",
                                                             np.array([-1]))],
                                  name=f"{name}/GroupSum", keepdims=0)
            else:  # zero-padded widths: the indicator also drops the padding
                (xs,) = self.node("MatMul", [x, self.group_indicator(w.k, w.group_size)],
                                  name=f"{name}/GroupSum")
            (corr,) = self.node("MatMul", [xs, self.init(f"{name}.zeros_t", w.float_zeros.T)],
                                name=f"{name}/Zeros")
            (y,) = self.node("Add", [y, corr], name=f"{name}/AddZeros")
        if w.bias is not None:
            (y,) = self.node("Add", [y, self.init(f"{name}.bias", w.bias)], name=f"{name}/Bias")
        return y

    def embedding(self, ids: str, w: Weight, name: str) -> str:
        """Rows of a token table: ``Gather`` (fp32) or ``GatherBlockQuantized``, which reads
        the same integers the artifact holds (int8 or int4 with its scales and zero points),
        so the table stays as small in memory as on disk instead of growing to fp32."""
        if isinstance(w, Dense):
            return self.node("Gather", [self.init(f"{name}.weight", w.weight), ids],
                             name=f"{name}/Gather")[0]
        ins = [self.init(f"{name}.qweight", w.qweight.reshape(w.n, -1)), ids,
               self.init(f"{name}.scales", w.scales)]
        if w.zero_points is not None:
            ins.append(self.init(f"{name}.zero_points", w.zero_points))
        (y,) = self.node("GatherBlockQuantized", ins, domain="com.microsoft",
                         name=f"{name}/GatherBlockQuantized", bits=w.bits,
                         block_size=w.group_size, gather_axis=0, quantize_axis=1)
        width = w.groups * w.group_size
        if w.float_zeros is not None:  # + zero[row, g] on every column of group g
            (fz,) = self.node("Gather", [self.init(f"{name}.float_zeros", w.float_zeros), ids],
                              name=f"{name}/GatherZeros")
            (fz,) = self.node("Unsqueeze", [fz, self.init(f"{name}.axes", np.array([-1]))],
                              name=f"{name}/ZerosAxis")
            shape = self.init(f"{name}.grouped", np.array([0, 0, w.groups, w.group_size]))
            (y,) = self.node("Reshape", [y, shape], name=f"{name}/Grouped")
            (y,) = self.node("Add", [y, fz], name=f"{name}/AddZeros")
            (y,) = self.node("Reshape", [y, self.init(f"{name}.flat", np.array([0, 0, width]))],
                             name=f"{name}/Flat")
        if width != w.k:  # zero-padded columns of the last group
            starts, ends, axes = (self.init(f"{name}.{n}", np.array([v], np.int64)) for n, v in
                                  (("starts", 0), ("ends", w.k), ("axes", -1)))
            (y,) = self.node("Slice", [y, starts, ends, axes], name=f"{name}/Unpad")
        return y

    def group_indicator(self, k: int, group_size: int) -> str:
        name = f"group_indicator_{k}_{group_size}"
        if name not in self._shared:
            groups = -(-k // group_size)
            s = np.zeros((k, groups), np.float32)
            s[np.arange(k), np.arange(k) // group_size] = 1.0
            self._shared[name] = self.init(name, s)
        return name


def _norm_weight(module: torch.nn.Module) -> np.ndarray:
    """The norm's scale as ONNX's RMSNorm wants it: Gemma's ``1 + weight`` folded in."""
    return (module.weight.detach().float().numpy() + getattr(module, "offset", 0.0)).copy()


def _embedding_weight(emb: torch.nn.Module) -> Weight:
    """fp32 rows of a plain table; a quantized table (``as_linear``) keeps its integers."""
    as_linear = getattr(emb, "as_linear", None)
    if as_linear is None:
        return Dense(emb.weight.detach().float().numpy())
    return weight_of(as_linear(), None)


def _head_weight(model: BlockModel, spec: ExportSpec) -> Weight:
    head = model.lm_head
    if spec.quant is not None and spec.quantize_head and type(head) is torch.nn.Linear:
        return rtn(head.weight.detach().float().numpy(), spec.quant)
    if not spec.quantize_head and type(head) is torch.nn.Linear:
        return Dense(head.weight.detach().float().numpy().copy())
    return weight_of(head, spec.quant)


def _lora_delta(g: _Graph, x: str, y: str, block: int, group: str, fan_in: int,
                fan_out: int, inputs: list) -> str:
    """``y + (x @ A) @ B`` with ``A`` (in, R) and ``B`` (R, out) as graph inputs."""
    from onnx import TensorProto, helper

    from edgeweave.runtime.engines.onnx_lora import input_names, rank_dim

    a, b = input_names(block, group)
    r = rank_dim(block, group)
    inputs += [helper.make_tensor_value_info(a, TensorProto.FLOAT, [fan_in, r]),
               helper.make_tensor_value_info(b, TensorProto.FLOAT, [r, fan_out])]
    name = f"layers.{block}.lora.{group}"
    (xa,) = g.node("MatMul", [x, a], name=f"{name}/A")
    (d,) = g.node("MatMul", [xa, b], name=f"{name}/B")
    return g.node("Add", [y, d], name=f"{name}/Add")[0]


def _qk_norm(g: _Graph, qkv: str, att: torch.nn.Module, p: str, nh: int, nkv: int, hd: int,
             eps: float) -> list[str]:
    """Split the fused projection into q, k, v and RMS-normalize each head of q and k over
    head_dim (Qwen3, Gemma 3): GQA then rotates and attends them as separate inputs."""
    q, k, v = g.node("Split", [qkv, g.init(f"{p}.self_attn.qkv_split", np.array(
        [nh * hd, nkv * hd, nkv * hd], np.int64))], n_out=3, name=f"{p}/qkv_split", axis=-1)
    out = []
    for name, x, heads in (("q_norm", q, nh), ("k_norm", k, nkv)):
        (x,) = g.node("Reshape", [x, g.init(f"{p}.{name}.heads", np.array([0, 0, heads, hd]))],
                      name=f"{p}/{name}/heads")
        (x,) = g.node("SimplifiedLayerNormalization",
                      [x, g.init(f"{p}.self_attn.{name}.weight",
                                 _norm_weight(getattr(att, name)))],
                      name=f"{p}/{name}", axis=-1, epsilon=eps, stash_type=1)
        (x,) = g.node("Reshape", [x, g.init(f"{p}.{name}.flat", np.array([0, 0, heads * hd]))],
                      name=f"{p}/{name}/flat")
        out.append(x)
    return [*out, v]


def _silu(g: _Graph, gate: str, p: str) -> str:
    (sg,) = g.node("Sigmoid", [gate], name=f"{p}/sigmoid")
    return g.node("Mul", [gate, sg], name=f"{p}/silu")[0]


def _gelu_tanh(g: _Graph, gate: str, p: str) -> str:
    return g.node("Gelu", [gate], name=f"{p}/gelu", approximate="tanh")[0]  # opset 20+


_ACTIVATIONS = {"silu": _silu, "gelu_pytorch_tanh": _gelu_tanh}  # by HF's name


def build_stage(model: BlockModel, spec: ExportSpec, lora: bool = False):
    """Return the ``onnx.ModelProto`` of blocks ``[spec.start, spec.end)`` of ``model``
    (with LoRA factor inputs when ``lora``, see the module docstring)."""
    cfg = model.cfg
    check_exportable(cfg.family)
    shard = spec.shard(cfg.num_layers)
    missing = [i for i in range(shard.start, shard.end) if str(i) not in model.layers]
    if missing:
        raise ConfigError(f"the model holds blocks {model.shard} but the export asks for "
                          f"{shard}: load the model with a shard covering the export")
    st = _Stage(model, spec, lora)
    residual, pending = st.entry(shard.is_first), None
    for i in range(shard.start, shard.end):
        residual, pending = st.block(i, residual, pending)
    if shard.is_last:
        st.head(pending, residual)
    else:
        st.hidden_out(pending, residual)
    return st.proto(f"edgeweave_stage_{shard.start}_{shard.end}")


class _Stage:
    """One stage's export as it grows: the graph, its declared inputs and outputs (in the
    order the engines bind them), and the RoPE tables its blocks share.

    The residual stream is carried as ``(residual, pending)``: ``pending`` is a block's
    output not yet added to the residual, so the next norm fuses the add
    (``SkipSimplifiedLayerNormalization``)."""

    def __init__(self, model: BlockModel, spec: ExportSpec, lora: bool) -> None:
        from onnx import TensorProto, helper

        self.helper, self.tensor = helper, TensorProto
        self.model, self.cfg, self.spec, self.lora = model, model.cfg, spec, lora
        self.g = _Graph()
        self.inputs: list = []
        self.outputs: list = []
        self._tables: dict[int, tuple[str, str]] = {}  # cos/sin by RoPE kind (Gemma 3: two)

    def _value(self, name: str, shape: list, elem: int | None = None):
        return self.helper.make_tensor_value_info(
            name, self.tensor.FLOAT if elem is None else elem, shape)

    def _norm(self, x: str, weight: str, module: torch.nn.Module, name: str) -> str:
        """RMSNorm of ``x`` alone (no residual to fuse)."""
        return self.g.node("SimplifiedLayerNormalization",
                           [x, self.g.init(weight, _norm_weight(module))], name=name,
                           axis=-1, epsilon=self.cfg.rms_norm_eps, stash_type=1)[0]

    def _skip_norm(self, x: str, residual: str, weight: str, name: str) -> tuple[str, str]:
        """RMSNorm of ``x + residual``; returns ``(normed, new residual)``."""
        y, _, _, residual = self.g.node("SkipSimplifiedLayerNormalization",
                                        [x, residual, weight], n_out=4, domain="com.microsoft",
                                        name=name, epsilon=self.cfg.rms_norm_eps)
        return y, residual

    def _linear(self, x: str, w: Weight, name: str) -> str:
        return self.g.linear(x, w, name, self.spec.accuracy_level)

    def _lora(self, x: str, y: str, i: int, group: str, fan_in: int, fan_out: int) -> str:
        return _lora_delta(self.g, x, y, i, group, fan_in, fan_out, self.inputs) if self.lora else y

    def entry(self, is_first: bool) -> str:
        """Token ids through the (scaled) embedding on the first stage, else the hidden states
        the previous stage sent; then the sequence-length inputs every stage takes."""
        g, model = self.g, self.model
        if is_first:
            self.inputs.append(self._value("input_ids", ["batch", "seq"], self.tensor.INT64))
            h = g.embedding("input_ids", _embedding_weight(model.embed_tokens), "embed_tokens")
            scale = model.embed_scale()
            if scale is not None:  # Gemma: rows times sqrt(hidden)
                (h,) = g.node("Mul", [h, g.init("embed_scale", np.array(scale, np.float32))],
                              name="embed_tokens/scale")
        else:
            self.inputs.append(self._value("hidden_states", ["batch", "seq", self.cfg.hidden_size]))
            h = "hidden_states"
        self.inputs += [self._value("seqlens_k", ["batch"], self.tensor.INT32),
                        self._value("total_sequence_length", [], self.tensor.INT32)]
        return h

    def rope_tables(self, i: int) -> tuple[str, str]:
        """The cos/sin caches of block ``i``'s rotary kind, made on first use."""
        rot = self.model.rotary_for(i)
        if id(rot) not in self._tables:
            suffix = f"_{len(self._tables)}" if self._tables else ""
            freqs = np.outer(np.arange(self.spec.max_len, dtype=np.float64),
                             rot.inv_freq.double().numpy())
            g = self.g
            self._tables[id(rot)] = (
                g.init(f"cos_cache{suffix}", np.cos(freqs).astype(np.float32)),
                g.init(f"sin_cache{suffix}", np.sin(freqs).astype(np.float32)))
        return self._tables[id(rot)]

    def block(self, i: int, residual: str, pending: str | None) -> tuple[str, str]:
        """Decoder block ``i``: norm, attention, (Gemma 3: sandwich norms), norm, MLP."""
        layer = self.model.layers[str(i)]
        sandwich = hasattr(layer, "pre_feedforward_layernorm")  # Gemma 3's four norms
        p = f"layers.{i}"
        if pending is None and i == self.spec.start > 0:
            # the hidden states another stage sent (its residual + pending, added in fp32):
            # the same fused kernel the whole graph runs at this block, skip = exact zeros.
            # A plain SimplifiedLayerNormalization differs from it by ~1e-6, which int8
            # activations carry on (an AVX2 host: a 3-stage split left the whole graph's
            # greedy text at token 38 of 64)
            zero = self.g.init(SEAM_ZERO, np.array(0, np.float32))
            (zeros,) = self.g.node("Mul", [residual, zero], name=f"{p}/zeros")
            ln1 = self.g.init(f"{p}.input_layernorm.weight", _norm_weight(layer.input_layernorm))
            x, residual = self._skip_norm(residual, zeros, ln1, f"{p}/ln1")
        elif pending is None:
            x = self._norm(residual, f"{p}.input_layernorm.weight", layer.input_layernorm,
                           f"{p}/ln1")
        else:
            ln1 = self.g.init(f"{p}.input_layernorm.weight", _norm_weight(layer.input_layernorm))
            x, residual = self._skip_norm(pending, residual, ln1, f"{p}/ln1")
        o = self.attention(i, layer.self_attn, x)
        mlp_norm = layer.post_attention_layernorm
        if sandwich:  # the attention's own output norm, then the MLP's input norm
            o = self._norm(o, f"{p}.post_attention_layernorm.weight",
                           layer.post_attention_layernorm, f"{p}/post_attn")
            mlp_norm = layer.pre_feedforward_layernorm
        ln2 = self.g.init(f"{p}.{layer.mlp_norm}.weight", _norm_weight(mlp_norm))
        x, residual = self._skip_norm(o, residual, ln2, f"{p}/ln2")
        pending = self.mlp(i, layer.mlp, x)
        if sandwich:
            pending = self._norm(pending, f"{p}.post_feedforward_layernorm.weight",
                                 layer.post_feedforward_layernorm, f"{p}/post_ffw")
        return residual, pending

    def attention(self, i: int, att: torch.nn.Module, x: str) -> str:
        """Fused QKV projection, GroupQueryAttention over the preallocated KV cache (rotary
        inside), output projection; declares block ``i``'s past/present KV."""
        g, spec, cfg = self.g, self.spec, self.cfg
        nh, nkv, hd, p = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, f"layers.{i}"
        qkv_w = concat([weight_of(att.q_proj, spec.quant), weight_of(att.k_proj, spec.quant),
                        weight_of(att.v_proj, spec.quant)])
        qkv = self._linear(x, qkv_w, f"{p}.self_attn.qkv_proj")
        qkv = self._lora(x, qkv, i, "qkv", cfg.hidden_size, (nh + 2 * nkv) * hd)
        for kind in ("key", "value"):
            self.inputs.append(self._value(f"past_{kind}_{i}", ["batch", nkv, "max_len", hd]))
            self.outputs.append(self._value(f"present_{kind}_{i}", ["batch", nkv, "max_len", hd]))
        qkv_in = [qkv, "", ""]
        if hasattr(att, "q_norm"):  # QK-norm before the rotary GQA applies: q, k, v apart
            qkv_in = _qk_norm(g, qkv, att, p, nh, nkv, hd, cfg.rms_norm_eps)
        cos, sin = self.rope_tables(i)
        gqa = {"num_heads": nh, "kv_num_heads": nkv, "do_rotary": 1, "rotary_interleaved": 0,
               "scale": float(att.scale if att.scale is not None else hd ** -0.5)}
        if att.window is not None:  # a sliding block: the last `window` keys, itself included
            # (HF's j > i - window; GQA counts the same way: window - 1 fails at prefill)
            gqa["local_window_size"] = int(att.window)
        attn, _, _ = g.node(
            "GroupQueryAttention",
            [*qkv_in, f"past_key_{i}", f"past_value_{i}", "seqlens_k",
             "total_sequence_length", cos, sin],
            domain="com.microsoft", name=f"{p}/GQA",
            outputs=[f"{p}/attn", f"present_key_{i}", f"present_value_{i}"], **gqa)
        o = self._linear(attn, weight_of(att.o_proj, spec.quant), f"{p}.self_attn.o_proj")
        return self._lora(attn, o, i, "o", nh * hd, cfg.hidden_size)

    def mlp(self, i: int, mlp: torch.nn.Module, x: str) -> str:
        """Gated MLP: fused gate/up projection, the family's activation, down projection."""
        g, spec, cfg, p = self.g, self.spec, self.cfg, f"layers.{i}"
        inter = cfg.intermediate_size
        gu_w = concat([weight_of(mlp.gate_proj, spec.quant), weight_of(mlp.up_proj, spec.quant)])
        gu = self._linear(x, gu_w, f"{p}.mlp.gate_up_proj")
        gu = self._lora(x, gu, i, "gate_up", cfg.hidden_size, 2 * inter)
        gate, up = g.node("Split", [gu, g.init(f"{p}.mlp.split", np.array(
            [inter] * 2, np.int64))], n_out=2, name=f"{p}/split", axis=-1)
        act = _ACTIVATIONS[FAMILIES[cfg.family].hidden_act](g, gate, p)
        (act,) = g.node("Mul", [act, up], name=f"{p}/glu")
        down = self._linear(act, weight_of(mlp.down_proj, spec.quant), f"{p}.mlp.down_proj")
        return self._lora(act, down, i, "down", inter, cfg.hidden_size)

    def head(self, pending: str, residual: str) -> None:
        """The last stage: final norm, LM head (on the last position only unless asked for
        all), Gemma's soft cap; output ``logits``."""
        g, cfg = self.g, self.cfg
        last = pending
        if self.spec.logits == "last":  # the head only where generation needs it
            starts, ends, axes = (g.init(n, np.array([v], np.int64)) for n, v in
                                  ((LAST_STARTS, -1), ("last.ends", 2 ** 62), ("last.axes", 1)))
            # also a graph input: its initializer is the default a run may override
            # (0: every position, for forward_all); ORT then does not fold it as a constant
            self.inputs.append(self._value(LAST_STARTS, [1], self.tensor.INT64))
            (last,) = g.node("Slice", [pending, starts, ends, axes], name="last/pending")
            (residual,) = g.node("Slice", [residual, starts, ends, axes], name="last/residual")
        nw = g.init("norm.weight", _norm_weight(self.model.norm))
        x, _ = self._skip_norm(last, residual, nw, "norm")
        # a dense tied head stores the transposed table once more: MatMul's prepacked B
        # is what makes the (1 x H) @ (H x V) product fast, worth 113 MB on SmolLM2
        y = self._linear(x, _head_weight(self.model, self.spec), "lm_head")
        cap = cfg.final_logit_softcapping
        if cap:  # Gemma: cap * tanh(logits / cap)
            c = g.init("softcap", np.array(cap, np.float32))
            (y,) = g.node("Div", [y, c], name="softcap/div")
            (y,) = g.node("Tanh", [y], name="softcap/tanh")
            (y,) = g.node("Mul", [y, c], name="softcap/mul")
        g.node("Identity", [y], name="logits", outputs=["logits"])
        self.outputs.insert(0, self._value("logits", ["batch", "seq_out", cfg.vocab_size]))

    def hidden_out(self, pending: str, residual: str) -> None:
        """Any other stage: the residual stream goes on as ``hidden_states_out``."""
        self.g.node("Add", [pending, residual], name="residual/out",
                    outputs=["hidden_states_out"])
        self.outputs.insert(0, self._value("hidden_states_out",
                                           ["batch", "seq", self.cfg.hidden_size]))

    def proto(self, name: str):
        helper = self.helper
        graph = helper.make_graph(self.g.nodes, name, self.inputs, self.outputs, self.g.inits)
        model_proto = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET),
                                  helper.make_opsetid("com.microsoft", MS_OPSET)],
            producer_name="edgeweave")
        model_proto.ir_version = 10
        return model_proto

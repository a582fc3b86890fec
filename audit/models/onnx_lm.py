"""ONNX Runtime backend: an optimum-exported causal LM folder behind the common interface."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from audit.errors import UserError
from audit.models.interface import ContinuationScore, LanguageModel, ModelFacts, ScoreRequest
from audit.models.meta import TIED_HEAD_KEY
from audit.models.torch_lm import HFGeneration, score_rows, score_with_cache, scores_agree
from audit.paths import os_reason

# ONNX operators whose second input is a weight matrix the model multiplies by.
_WEIGHT_OPS = {"MatMul", "Gemm", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}


def output_head_nodes(graph: Any) -> list[Any]:
    """The products by a weight (float or block-quantized) that give one of the graph's outputs:
    the output head."""
    outputs = {output.name for output in graph.output}
    return [node for node in graph.node
            if set(node.output) & outputs and (node.op_type in _WEIGHT_OPS or node.op_type == "MatMulNBits")]


def onnx_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).glob("*.onnx") if p.is_file())


def onnx_weight_facts(path: Path) -> dict[str, Any]:
    """Parameter count, linear-weight sparsity and quantization of an ONNX graph.

    Sparsity counts exact zeros of float weights, and of 8-bit weights the values equal to
    their zero point (which dequantize to zero), the output head's (the product that gives a
    graph output) excluded, as for a PyTorch model; packed 4-bit weights are not measured.
    Block-quantized weights (MatMulNBits) are 8-bit "int8" or else "int4-weight-only". A head
    stored as the transpose of the token embeddings (`TIED_HEAD_KEY`) is counted once, with them.
    """
    import onnx
    from google.protobuf.message import DecodeError
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path), load_external_data=False)
    except OSError as exc:
        raise UserError(f"cannot read the ONNX graph {path}: {os_reason(exc)}") from None
    except (DecodeError, ValueError):
        raise UserError(f"{path} is not a valid ONNX graph") from None
    graph = model.graph
    # A 4-bit weight is stored packed (two per byte, in blocks): count its logical K x N.
    packed_weights = {}
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            attrs = _attributes(node)
            packed_weights[node.input[1]] = attrs.get("K", 0) * attrs.get("N", 0)
    parameters = sum(
        packed_weights.get(init.name, int(np.prod(init.dims))) for init in graph.initializer if len(init.dims) >= 1
    )
    head = output_head_nodes(graph)
    if any(prop.key == TIED_HEAD_KEY for prop in model.metadata_props):
        parameters -= sum(packed_weights.get(node.input[1], 0) for node in head)
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(Path(path).parent))
    except OSError as exc:  # a missing or unreadable external weights file
        raise UserError(f"cannot read the external weights of {path} ({exc.filename}): {os_reason(exc)}") from None
    except ValueError:
        raise UserError(f"the external weights of {path} do not match its graph") from None
    inits = {init.name: init for init in graph.initializer}
    ops = {node.op_type for node in graph.node}
    nbits = {_attributes(node).get("bits", 4) for node in graph.node if node.op_type == "MatMulNBits"}
    quantization = None
    if nbits == {8} or ops & {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul"}:
        quantization = "int8"
    elif nbits:
        quantization = "int4-weight-only"
    zeros = total = 0
    packed = False
    for node in graph.node:
        if any(node is h for h in head):  # by identity: nodes may have no names
            continue
        if node.op_type == "MatMulNBits":
            counted = _nbits8_zeros(node, inits)
            if counted is None:
                packed = True
            else:
                zeros, total = zeros + counted[0], total + counted[1]
            continue
        if node.op_type not in _WEIGHT_OPS or len(node.input) < 2 or node.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if weight.ndim != 2:
            continue
        zero_point = 0
        if node.op_type == "MatMulInteger" and len(node.input) > 3 and node.input[3] in inits:
            zero_point = numpy_helper.to_array(inits[node.input[3]])
        zeros += int((weight == zero_point).sum())
        total += weight.size
    sparsity = zeros / total if total and not packed else None
    return {"parameters": parameters, "weight_sparsity": sparsity, "quantization": quantization}


def _attributes(node: Any) -> dict[str, int]:
    return {a.name: a.i for a in node.attribute}


def _nbits8_zeros(node: Any, inits: dict[str, Any]) -> tuple[int, int] | None:
    """(zeros, weights) of an 8-bit MatMulNBits weight, or None when it is not 8-bit. The weight
    is stored as N rows of K values padded to whole blocks, unsigned, a value equal to its block's
    zero point (128 when the node has none: symmetric) dequantizing to zero."""
    from onnx import numpy_helper

    attrs = _attributes(node)
    if attrs.get("bits", 4) != 8 or node.input[1] not in inits:
        return None
    k, n, block = attrs["K"], attrs["N"], attrs["block_size"]
    blocks = -(-k // block)
    weight = numpy_helper.to_array(inits[node.input[1]]).reshape(n, blocks * block)
    zero_point: Any = 128
    if len(node.input) > 3 and node.input[3]:
        if node.input[3] not in inits:
            return None
        zero_point = np.repeat(numpy_helper.to_array(inits[node.input[3]]).reshape(n, blocks), block, axis=1)
    return int((weight == zero_point)[:, :k].sum()), k * n


class OnnxLanguageModel(HFGeneration, LanguageModel):
    backend = "onnxruntime"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        onnx_path: Path,
        text_prefix_ids: Sequence[int],
        stop_token_ids: Sequence[int],
        facts_template: dict[str, Any],
        cache_checked: bool = False,
    ) -> None:
        super().__init__(tokenizer, text_prefix_ids=text_prefix_ids, stop_token_ids=stop_token_ids)
        self.model = model
        self.cache_checked = cache_checked  # scoring from the cache agreed with rows on the float graph
        self.onnx_path = Path(onnx_path)
        self._facts_template = facts_template
        self._weight_facts: dict[str, Any] | None = None
        self._caching: bool | None = None  # decided by a self-check on first use

    def _forward(self, ids: Any, attention: Any) -> Any:
        return self.model(input_ids=ids, attention_mask=attention, use_cache=False).logits

    def _forward_cached(self, **inputs: Any) -> Any:
        return self.model(**inputs, use_cache=True)

    def score(self, requests: Sequence[ScoreRequest], strategy: str = "cached") -> list[list[ContinuationScore]]:
        """Score continuations. "cached" (or "packed", the PyTorch engine's name for its own way
        of sharing contexts) feeds each context once and its continuations after it from the
        key/value cache, where the graph takes them and a self-check agrees; "rows" (and
        "naive") one padded row per continuation."""
        with self.lock:
            if strategy in ("cached", "packed"):
                if self._caching is None:
                    # A graph whose activations are rounded to int8 levels answers a little
                    # differently from the cache than from rows (a float rounding moves a value
                    # to the next level), so for an edge-audit variant the check ran on the
                    # float graph it was quantized from, whose attention it keeps.
                    self._caching = self._takes_cache() if self.cache_checked else self._cache_agrees()
                if self._caching:
                    return score_with_cache(requests, self._forward_cached)
            return score_rows(requests, self._forward)

    def _takes_cache(self) -> bool:
        names = set(getattr(self.model, "input_names", None) or ())
        return ("position_ids" in names and any(n.startswith("past_key_values") for n in names)
                and bool(getattr(self.model, "can_use_cache", False)))

    def _cache_agrees(self) -> bool:
        """Whether the graph takes past keys and values with position ids, and scoring from the
        cache gives what padded rows give: contexts of several lengths (padding between a
        context and its continuations), contexts that share a prefix (padding between the
        prefix and each rest) and continuations of one and several tokens."""
        if not self._takes_cache():
            return False
        probes = [
            self.text_request("The river rose after the storm, and the old stone bridge", [" held.", " fell into the water."]),
            self.text_request("The river rose after the storm, and the old stone bridge was closed for a week, so", [" we waited.", " they"]),
            self.text_request("She opened the letter", [" and smiled.", " slowly", "."]),
            self.text_request("Two friends met at the station before the morning train to the coast", [" left.", " was late again."]),
        ]
        try:
            cached = score_with_cache(probes, self._forward_cached)
        except Exception:
            return False
        return scores_agree(cached, score_rows(probes, self._forward))

    def facts(self) -> ModelFacts:
        if self._weight_facts is None:
            self._weight_facts = onnx_weight_facts(self.onnx_path)
        template = dict(self._facts_template)
        return ModelFacts(
            backend=self.backend,
            dtype=template.pop("dtype", "float32"),
            has_chat_template=bool(getattr(self.tokenizer, "chat_template", None)),
            quantization=self._weight_facts["quantization"] or template.pop("quantization", None),
            parameters=self._weight_facts["parameters"],
            weight_sparsity=self._weight_facts["weight_sparsity"],
            **{k: v for k, v in template.items() if k != "quantization"},
        )

    def close(self) -> None:
        self.model = None

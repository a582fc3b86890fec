"""Model files edge-audit writes: dense safetensors streamed tensor by tensor, and the compressed
sparse format (bitmask + packed non-zeros) that decodes back to exactly the same bits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from audit.models.meta import SPARSE_FILE, SPARSE_FORMAT, SPARSE_VERSION, WEIGHTS_META_KEY, check_mask_count, packed_parts, sparse_layout, unpacked

DENSE_FILE = "model.safetensors"

_DTYPE_CODES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
# Exact zero test on the bit pattern: -0.0 is not zero here, so it survives a round trip.
_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


# -- streaming safetensors writer -------------------------------------------------------------
def write_safetensors(path: Path, tensors: Iterable[tuple[str, torch.Tensor | Callable[[], torch.Tensor]]], specs: Sequence[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str] | None = None) -> int:
    """Write a safetensors file one tensor at a time, so memory never holds a second copy of
    the model. `specs` (name, dtype, shape) fixes the header; `tensors` then yields the data
    in the same order (a callable is called when its turn comes). Returns the bytes written."""
    header: dict[str, Any] = {}
    offset = 0
    for name, dtype, shape in specs:
        size = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _DTYPE_CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = metadata
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    expected = dict((name, (dtype, tuple(shape))) for name, dtype, shape in specs)
    with open(path, "wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        count = 0
        for name, tensor in tensors:
            value = tensor() if callable(tensor) else tensor
            dtype, shape = expected[name]
            if value.dtype != dtype or tuple(value.shape) != shape:
                raise ValueError(f"{name}: header says {dtype} {shape}, data is {value.dtype} {tuple(value.shape)}")
            data = value.detach().contiguous().reshape(-1)
            if data.numel():
                handle.write(memoryview(data.view(torch.uint8).numpy()))
            count += 1
        if count != len(specs):
            raise ValueError(f"wrote {count} tensors, the header lists {len(specs)}")
    return 8 + len(encoded) + offset


def unique_tensors(state: dict[str, torch.Tensor], tied: set[str]) -> list[tuple[str, torch.Tensor]]:
    """A state dict without duplicates of tensors that share memory; of a shared tensor the
    declared tied copy (e.g. the output head) is dropped and its owner kept, as transformers does."""
    groups: dict[tuple[int, tuple[int, ...], torch.dtype], list[str]] = {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype) if tensor.numel() else (id(tensor), (), tensor.dtype)
        groups.setdefault(key, []).append(name)
    keep = set()
    for names in groups.values():
        owners = [n for n in names if n not in tied] or names
        keep.add(owners[0])
    return [(name, tensor) for name, tensor in state.items() if name in keep]


def dense_state(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The tensors `save_pretrained` would store."""
    return unique_tensors(model.state_dict(), set(getattr(model, "_tied_weights_keys", None) or []))


def save_dense(model: nn.Module, folder: Path) -> Path:
    """Weights as one dense safetensors file that transformers loads like its own."""
    items = dense_state(model)
    path = Path(folder) / DENSE_FILE
    specs = [(name, t.dtype, tuple(t.shape)) for name, t in items]
    write_safetensors(path, items, specs, {"format": "pt"})
    return path


# -- the compressed sparse format --------------------------------------------------------------
def nonzero_mask(tensor: torch.Tensor) -> torch.Tensor:
    """True where the tensor's bits are not all zero."""
    flat = tensor.detach().contiguous().reshape(-1)
    if flat.dtype == torch.bool:
        return flat
    return flat.view(_SAME_SIZE_INT[flat.element_size()]) != 0


def _worth_packing(tensor: torch.Tensor, nonzeros: int) -> bool:
    if not tensor.is_floating_point() or tensor.dim() < 2:
        return False
    itemsize = tensor.element_size()
    return nonzeros * itemsize + (tensor.numel() + 7) // 8 < tensor.numel() * itemsize


def save_sparse(items: Sequence[tuple[str, torch.Tensor]], path: Path) -> int:
    """Store each tensor that gets smaller that way as a bitmask of its non-zero positions
    (one bit per weight, packed) plus its non-zero values in order; the others as they are."""
    specs: list[tuple[str, torch.dtype, tuple[int, ...]]] = []
    packed: dict[str, dict[str, Any]] = {}
    for name, tensor in items:
        nonzeros = int(nonzero_mask(tensor).sum())
        if _worth_packing(tensor, nonzeros):
            packed[name] = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
            bits, values = packed_parts(name)
            specs.append((bits, torch.uint8, ((tensor.numel() + 7) // 8,)))
            specs.append((values, tensor.dtype, (nonzeros,)))
        else:
            specs.append((name, tensor.dtype, tuple(tensor.shape)))

    def stream():
        for name, tensor in items:
            if name in packed:
                mask = nonzero_mask(tensor)
                bits = torch.from_numpy(np.packbits(mask.numpy()))
                bits_name, values_name = packed_parts(name)
                yield bits_name, bits
                yield values_name, tensor.detach().contiguous().reshape(-1)[mask]
            else:
                yield name, tensor

    meta = {"format": SPARSE_FORMAT, "version": SPARSE_VERSION, "packed": packed}
    return write_safetensors(path, stream(), specs, {"format": "pt", WEIGHTS_META_KEY: json.dumps(meta)})


def load_sparse(path: Path) -> dict[str, torch.Tensor]:
    """Decode a compressed sparse file back to dense tensors, bit for bit."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        stored = {name: (handle.get_slice(name).get_dtype(), handle.get_slice(name).get_shape()) for name in handle.keys()}
        packed = sparse_layout(path, handle.metadata() or {}, stored)
        out: dict[str, torch.Tensor] = {}
        for name, tensor in packed.items():
            bits_name, values_name = tensor.parts
            bits = handle.get_tensor(bits_name)
            mask = torch.from_numpy(np.unpackbits(bits.numpy(), count=tensor.numel).astype(bool))
            check_mask_count(path, tensor, int(mask.sum()))
            dense = torch.zeros(tensor.numel, dtype=getattr(torch, tensor.dtype))
            dense[mask] = handle.get_tensor(values_name)
            out[name] = dense.reshape(tensor.shape)
        for name in unpacked(stored, packed):
            # Copied out of the file's memory map: a tensor read in place would keep the whole
            # map, whose packed pages were all read above, resident for the model's life.
            out[name] = handle.get_tensor(name).clone()
    return out


def model_class(config: Any, trust_remote_code: bool = False) -> type:
    """The transformers causal-LM class for a config (built on the meta device to find it)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        probe = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return type(probe)


def load_sparse_model(folder: Path, dtype: torch.dtype, trust_remote_code: bool = False) -> nn.Module:
    """A transformers model from a compressed sparse folder, decoded in memory."""
    from transformers import AutoConfig

    from audit.models.loader import require_whole_weights

    state = load_sparse(Path(folder) / SPARSE_FILE)
    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    cls = model_class(config, trust_remote_code)
    model, info = cls.from_pretrained(None, config=config, state_dict=state, dtype=dtype, output_loading_info=True)
    # A tensor the file lacks would be filled at random, as in a plain folder (audit.models.loader).
    require_whole_weights(model, info, f"cannot load the model in {folder}: its weights in {SPARSE_FILE}")
    if (Path(folder) / "generation_config.json").is_file():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(str(folder))
    return model.eval()

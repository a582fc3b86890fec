"""Loading folders written in edge-audit's own storage formats, by the format their meta names."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from audit.errors import UserError


def load_stored_model(folder: Path, storage: str, dtype: torch.dtype, trust_remote_code: bool = False) -> nn.Module:
    from audit.compress.quantize import load_int8_model
    from audit.compress.storage import load_sparse_model
    from audit.models.meta import INT8_FORMAT, SPARSE_FORMAT

    if storage == SPARSE_FORMAT:
        return load_sparse_model(Path(folder), dtype, trust_remote_code)
    if storage == INT8_FORMAT:
        # Dynamic int8 layers take float32 activations, so the rest of the model stays float32.
        return load_int8_model(Path(folder), trust_remote_code)
    raise UserError(f"{folder} is stored as {storage!r}, which this version of edge-audit cannot read")

"""Side-by-side profiles of model variants with each figure's ratio to the dense baseline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

# Figures a variant table shows, with whether a smaller value is better (the ratio's meaning).
COMPARED_FIGURES: tuple[tuple[str, str, bool], ...] = (
    ("latency_ms_p50", "request ms p50", True),
    ("time_to_first_token_ms_p50", "first token ms p50", True),
    ("decode_ms_per_token_p50", "decode ms/token p50", True),
    ("decode_ms_per_token_p95", "decode ms/token p95", True),
    ("generated_tokens_per_s_p50", "generated tok/s p50", False),
    ("probe_item_ms_p50", "probe item ms p50", True),
    ("rss_peak_mb", "peak RSS MB", True),
    ("size_on_disk_mb", "size on disk MB", True),
)


def ratio(value: float | None, baseline: float | None) -> float | None:
    """value / baseline; None when either is missing or the baseline is zero."""
    if value is None or baseline is None or baseline == 0:
        return None
    return value / baseline


@dataclass(frozen=True)
class VariantRow:
    name: str
    backend: str | None
    quantization: str | None
    weight_sparsity: float | None
    figures: dict[str, float | None]
    ratios: dict[str, float | None]  # figure / the baseline's figure

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.name,
            "backend": self.backend,
            "quantization": self.quantization,
            "weight_sparsity": self.weight_sparsity,
            **self.figures,
            **{f"{key}_ratio_to_dense": None if value is None else round(value, 3) for key, value in self.ratios.items()},
        }


def compare_profiles(profiles: Mapping[str, Mapping[str, Any]], baseline: str = "dense") -> list[VariantRow]:
    """One row per profile (as `ModelProfile.to_dict()` gives it), the baseline first."""
    if baseline not in profiles:
        raise ValueError(f"no profile named {baseline!r} to compare against")
    base = profiles[baseline]
    order = [baseline] + [name for name in profiles if name != baseline]
    rows = []
    for name in order:
        profile = profiles[name]
        model = profile.get("model", {})
        figures = {key: profile.get(key) for key, _, _ in COMPARED_FIGURES}
        ratios = {key: ratio(profile.get(key), base.get(key)) for key, _, _ in COMPARED_FIGURES}
        rows.append(
            VariantRow(
                name=name,
                backend=model.get("backend"),
                quantization=model.get("quantization"),
                weight_sparsity=model.get("weight_sparsity"),
                figures=figures,
                ratios=ratios,
            )
        )
    return rows


def _cell(value: float | None, ratio_value: float | None, is_baseline: bool) -> str:
    if value is None:
        return "n/a"
    text = f"{value:,.1f}" if abs(value) >= 10 else f"{value:,.2f}"
    if is_baseline or ratio_value is None:
        return text
    return f"{text} ({ratio_value:.2f}x)"


def render_table(rows: Sequence[VariantRow]) -> str:
    """A plain-text table, one column per variant: each figure, and in brackets its ratio to
    the first (dense) column: below 1.00x is smaller than dense."""
    columns = [["variant", "backend", "weight sparsity", *(label for _, label, _ in COMPARED_FIGURES)]]
    for index, row in enumerate(rows):
        backend = row.backend or "n/a"
        if row.quantization:
            backend = f"{backend} {row.quantization}"
        sparsity = "n/a" if row.weight_sparsity is None else f"{row.weight_sparsity:.1%}"
        cells = [_cell(row.figures[key], row.ratios[key], index == 0) for key, _, _ in COMPARED_FIGURES]
        columns.append([row.name, backend, sparsity, *cells])
    widths = [max(len(cell) for cell in column) for column in columns]
    lines = []
    for line_index in range(len(columns[0])):
        cells = [
            column[line_index].ljust(widths[i]) if i == 0 else column[line_index].rjust(widths[i])
            for i, column in enumerate(columns)
        ]
        lines.append("  ".join(cells).rstrip())
        if line_index == 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)

"""Outlier layers for int8: linear layers whose calibration inputs reach values so far above their
typical channel that one int8 scale per activation tensor leaves the rest almost no resolution.

Dynamic int8 quantizes a linear layer's input with one scale for the whole tensor: step =
range / 255. When a few input channels (or one token in them) reach R times the magnitude a
typical channel ever reaches, a typical channel spans about 127 / R of the 255 levels even at
its peak. Such layers are kept in float; every other linear layer is quantized as before.

The statistic, per linear layer, over seeded calibration windows run through the float model:

    ratio = max |x| over every input value / lower median over input channels of (max |x| of that channel)

A layer is an outlier when its ratio exceeds the rule's threshold. The windows are drawn with a
fixed seed and the maxima are exact, so the same model and rule always give the same layers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from audit.errors import UserError
from audit.models.interface import LanguageModel
from audit.progress import Job, Progress, check_cancel

if TYPE_CHECKING:
    from audit.compress.calibration import CalibrationSet

# A typical channel keeps fewer than 127 / 32 = 4 of int8's levels at its own peak above this.
DEFAULT_OUTLIER_RATIO = 32.0
# Calibration for the statistic: a handful of windows suffice, as the maxima it needs recur in
# every window (the largest sit on the document-start token each window begins with).
OUTLIER_NSAMPLES = 8
OUTLIER_SEQLEN = 512


@dataclass(frozen=True)
class OutlierRule:
    """Which linear layers int8 keeps in float: those whose input ratio exceeds `ratio`.
    `ratio` None quantizes every linear layer (no calibration run)."""

    ratio: float | None = DEFAULT_OUTLIER_RATIO
    nsamples: int = OUTLIER_NSAMPLES
    seqlen: int = OUTLIER_SEQLEN
    seed: int = 0

    def __post_init__(self) -> None:
        if self.ratio is not None:
            if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or math.isnan(self.ratio) or self.ratio <= 1:
                raise UserError(f"the outlier ratio must be a number above 1, got {self.ratio!r}")
        if self.nsamples < 1:
            raise UserError(f"outlier calibration needs at least 1 sample, got {self.nsamples}")

    def describe(self) -> str:
        if self.ratio is None:
            return "no outlier rule: every linear layer quantized"
        return (
            f"kept float when max |input| > {self.ratio:g} x the median channel's max |input| "
            f"over {self.nsamples} calibration windows of {self.seqlen} tokens (seed {self.seed})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "statistic": "max |x| / lower median over input channels of per-channel max |x|",
            "ratio": self.ratio,
            "nsamples": self.nsamples,
            "seqlen": self.seqlen,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class InputRange:
    """A linear layer's calibration inputs: the largest |x|, the input channel it was in, and the
    typical channel's largest |x| (lower median over channels)."""

    name: str
    max_abs: float
    channel: int
    typical_abs: float

    @property
    def ratio(self) -> float:
        if self.max_abs == 0.0:
            return 1.0  # an input that is all zeros loses nothing to any scale
        if self.typical_abs == 0.0:
            return math.inf
        return self.max_abs / self.typical_abs

    def to_dict(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "max_abs": round(self.max_abs, 6),
            "channel": self.channel,
            "typical_abs": round(self.typical_abs, 6),
            "ratio": None if math.isinf(ratio) else round(ratio, 3),
        }


def input_range(name: str, channel_max_abs: torch.Tensor) -> InputRange:
    """The range of one layer's inputs from the largest |x| seen in each input channel."""
    if channel_max_abs.dim() != 1 or channel_max_abs.numel() == 0:
        raise ValueError(f"{name}: expected one maximum per input channel, got shape {tuple(channel_max_abs.shape)}")
    values = channel_max_abs.detach().to(torch.float64)
    channel = int(torch.argmax(values))  # the first channel holding the maximum
    return InputRange(name, float(values[channel]), channel, float(torch.median(values)))


def outlier_layers(ranges: Sequence[InputRange], ratio: float) -> list[str]:
    """The layers whose input ratio exceeds `ratio`, in the order given."""
    return [r.name for r in ranges if r.ratio > ratio]


@torch.inference_mode()
def channel_maxima(
    model: nn.Module, names: Sequence[str], samples: torch.Tensor, cancel: threading.Event | None = None
) -> Job[dict[str, torch.Tensor]]:
    """The largest |x| per input channel of each named linear layer (nn.Linear or GPT-2's Conv1D,
    whose input is laid out alike) over the calibration windows, run one at a time."""
    maxima: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(_module: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            peak = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float()
            previous = maxima.get(name)
            maxima[name] = peak if previous is None else torch.maximum(previous, peak)

        return record

    handles = [model.get_submodule(name).register_forward_pre_hook(hook(name)) for name in names]
    try:
        total = int(samples.shape[0])
        for index in range(total):
            check_cancel(cancel)
            yield Progress("outliers", index, total, f"calibration window {index + 1} of {total}")
            model(input_ids=samples[index : index + 1], use_cache=False)
        yield Progress("outliers", total, total, "measured")
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in names if name not in maxima]
    if missing:
        raise UserError(f"calibration never reached the layer {missing[0]}; cannot measure its input range")
    return maxima


@dataclass(frozen=True)
class OutlierChoice:
    """What an int8 scheme does with outliers: the rule, the layers it kept in float, and the
    measured ranges behind that (the largest ratios, for the record)."""

    rule: OutlierRule
    kept_float: tuple[str, ...]
    ranges: tuple[InputRange, ...] = ()
    calibration: dict[str, Any] | None = None
    skipped: str | None = None  # why no calibration ran, when it did not

    def note(self, scheme: str) -> str:
        """One line for the variant's facts, naming the choice."""
        if self.skipped is not None:
            return f"{scheme}: every linear layer int8 ({self.skipped})"
        if self.rule.ratio is None:
            return f"{scheme}: every linear layer int8 (no outlier rule)"
        if not self.kept_float:
            return f"{scheme}: every linear layer int8, no outlier layer ({self.rule.describe()})"
        count = len(self.kept_float)
        layers = "layer" if count == 1 else "layers"
        return f"{scheme}: int8 except {count} outlier {layers} kept float: {', '.join(self.kept_float)} ({self.rule.describe()})"

    def largest(self, count: int = 5) -> list[InputRange]:
        return sorted(self.ranges, key=lambda r: (-r.ratio, r.name))[:count]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule.to_dict(),
            "kept_float": list(self.kept_float),
            "largest_ratios": {r.name: r.to_dict() for r in self.largest()},
            "calibration": self.calibration,
            "skipped": self.skipped,
        }


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Inside, `model` runs in eval mode (no dropout); after, in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def measure_inputs(
    lm: LanguageModel, model: nn.Module, names: Sequence[str], rule: OutlierRule, cancel: threading.Event | None = None
) -> Job[tuple[dict[str, torch.Tensor], CalibrationSet]]:
    """The largest |x| per input channel of each layer among `names`, over the rule's calibration
    windows run through the float `model` (the module behind `lm`), and those windows."""
    from audit.compress.calibration import calibration_set

    context_length = lm.facts().context_length
    seqlen = min(rule.seqlen, context_length) if context_length else rule.seqlen
    calibration = calibration_set(
        lm, nsamples=rule.nsamples, seqlen=seqlen, seed=rule.seed, context_length=context_length, cancel=cancel
    )
    with evaluating(model):
        maxima = yield from channel_maxima(model, names, calibration.samples, cancel)
    return maxima, calibration


def choose_outliers(rule: OutlierRule, names: Sequence[str], maxima: Mapping[str, torch.Tensor], calibration: CalibrationSet) -> OutlierChoice:
    """The rule applied to the layers' measured input maxima, naming the windows it was judged
    over: shorter than the rule's where the model's context is (`measure_inputs`)."""
    if rule.ratio is None:
        return OutlierChoice(rule, ())
    rule = dataclasses.replace(rule, seqlen=int(calibration.samples.shape[1]))
    ranges = tuple(input_range(name, maxima[name]) for name in names)
    return OutlierChoice(rule, tuple(outlier_layers(ranges, rule.ratio)), ranges, calibration.to_dict())


def detect_outliers(
    lm: LanguageModel, model: nn.Module, names: Sequence[str], rule: OutlierRule, cancel: threading.Event | None = None
) -> Job[OutlierChoice]:
    """Run the rule's calibration windows through the float `model` (the module behind `lm`) and
    choose the layers among `names` to keep in float."""
    if rule.ratio is None:
        return OutlierChoice(rule, ())
    maxima, calibration = yield from measure_inputs(lm, model, names, rule, cancel)
    return choose_outliers(rule, names, maxima, calibration)

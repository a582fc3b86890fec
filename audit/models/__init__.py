"""Model sources, loading, the conversion cache and the one interface every backend answers through."""

from audit.models.interface import Generation, LanguageModel, ModelFacts, ScoreRequest, ContinuationScore
from audit.models.loader import LoadOptions, load_model, prepare_alias

__all__ = [
    "ContinuationScore",
    "Generation",
    "LanguageModel",
    "LoadOptions",
    "ModelFacts",
    "ScoreRequest",
    "load_model",
    "prepare_alias",
]

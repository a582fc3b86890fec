"""The profiler on the real default model: forced-length runs and sensible figures."""

import pytest

from audit.profile import ProfileSettings, profile_loaded
from audit.progress import drive

pytestmark = pytest.mark.real_model


def test_profile_of_the_default_model(default_model):
    settings = ProfileSettings(prompt_tokens=32, new_tokens=6, runs=2, warmup_runs=1, probe_items=2)
    data = drive(profile_loaded(default_model, settings)).to_dict()
    assert data["model"]["name"] == "smollm2-135m"
    assert data["generated_tokens"] == 6 and data["decode_ms_per_token_samples"] == 2 * 5
    assert 0 < data["time_to_first_token_ms_p50"] < data["latency_ms_p50"]
    assert data["generated_tokens_per_s_p50"] > 0
    # float32 weights of 134.5M parameters, in the process while it runs
    assert data["rss_peak_mb"] > 134.5e6 * 4 / 2**20
    assert 500 < data["size_on_disk_mb"] < 600

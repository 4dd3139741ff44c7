"""Validation of the dedup config section."""

from __future__ import annotations

import pytest

from lmhpc.config import ConfigError, load_config
from lmhpc.dedup.config import DedupConfig
from lmhpc.dedup.settings import DedupSettings


def cfg(make_config, **dedup):
    return load_config(make_config({"run": {"stages": ["dedup"]}, "dedup": dedup}))


def test_defaults_resolve_to_datasketch_optimum(make_config):
    c = cfg(make_config)
    s = DedupSettings.from_config(c.dedup, c.run.seed)
    assert (s.bands, s.rows, s.num_perm, s.ngram, s.threshold) == (14, 9, 128, 5, 0.7)
    assert s.seed == c.run.seed and s.verify_threshold == 0.7


def test_explicit_bands_rows_and_seed(make_config):
    c = cfg(make_config, seed=9, minhash={"bands": 20, "rows": 5, "verify_threshold": 0.8})
    s = DedupSettings.from_config(c.dedup, c.run.seed)
    assert (s.bands, s.rows, s.seed, s.verify_threshold) == (20, 5, 9, 0.8)


@pytest.mark.parametrize("dedup, key", [
    ({"minhash": {"bands": 20}}, "dedup.minhash.rows"),
    ({"minhash": {"bands": 20, "rows": 7}}, "dedup.minhash.bands"),
    ({"minhash": {"threshold": 1.5}}, "dedup.minhash.threshold"),
    ({"minhash": {"num_perm": 1}}, "dedup.minhash.num_perm"),
    ({"minhash": {"lsh_weights": [0.5, 0.6]}}, "dedup.minhash.lsh_weights"),
    ({"minhash": {"shingle": "sentence"}}, "dedup.minhash.shingle"),
    ({"minhash": {"ngram": 0}}, "dedup.minhash.ngram"),
    ({"exact": {"enabled": False}, "minhash": {"enabled": False}}, "dedup.exact.enabled"),
    ({"shard_max_mb": 0}, "dedup.shard_max_mb"),
    ({"exact": {"normalize": {"unicode_form": "NFD"}}}, "dedup.exact.normalize.unicode_form"),
    ({"minhash": {"num_prem": 64}}, "dedup.minhash.num_prem"),
])
def test_bad_values_name_their_key(make_config, dedup, key):
    with pytest.raises(ConfigError) as e:
        cfg(make_config, **dedup)
    assert f"'{key}'" in str(e.value)


def test_settings_fingerprints_follow_what_they_cover():
    a = DedupSettings.from_config(DedupConfig(), 1)
    other_threshold = DedupConfig()
    other_threshold.minhash.verify_threshold = 0.9
    b = DedupSettings.from_config(other_threshold, 1)
    assert a.fingerprint() == b.fingerprint()  # signatures stay valid
    assert a.decision_fingerprint() != b.decision_fingerprint()  # decisions do not
    assert DedupSettings.from_config(DedupConfig(), 2).fingerprint() != a.fingerprint()

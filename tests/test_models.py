"""Hot swap and A/B arms without Flink: udfs.models.ModelSet and udfs.ab on real artifacts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgpack
import pytest

from tests.job_fixtures import covisit_artifact, generated_log
from udfs.ab import assign_arm, unit_hash
from udfs.config import ArmConfig, ConfigError, load_config
from udfs.control import ControlRecord, ControlRecordError, decode_control
from udfs.models import ModelSet
from udfs.registry import RegistryError
from udfs.runtime import ConfigModels, build_recommender
from udfs.state import UserState


@pytest.fixture(scope="module")
def versions(tmp_path_factory) -> dict[str, Path]:
    """A registry of two versions (v1, v2) of the fixture model."""
    root = tmp_path_factory.mktemp("registry")
    out = {}
    for v in ("v1", "v2"):
        art = covisit_artifact(tmp_path_factory.mktemp(v), v)
        out[v] = Path(shutil.copytree(art, root / v))
    return out


def _config(versions: dict[str, Path], **ab):
    overrides = {"ranking": {"artifact_dir": str(versions["v1"]), "registry_dir": str(versions["v1"].parent),
                             "provider": "cpu"}}
    if ab:
        overrides["ab"] = ab
    return load_config(overrides=overrides, environ={})


def _announce(versions: dict[str, Path], version: str, path: Path | None = None, arm: str | None = None):
    return ControlRecord("activate", version, str(path or versions[version]), 1, arm)


def _lists(models: ModelSet, events) -> list[dict]:
    states: dict = {}
    out = []
    for e in events:
        rec, arm = models.for_key(str(e.user_id))
        state = states.setdefault(e.user_id, UserState())
        if rec.apply(state, e):
            out.append(rec.recommend([rec.request(state, e)], arm)[0])
    return out


def test_an_announced_version_ranks_every_list_after_the_swap(versions):
    cfg = _config(versions)
    models = ModelSet(build_recommender(cfg), ConfigModels(cfg))
    events = generated_log(200, seed=4)
    before = _lists(models, events[:100])
    assert models.announce(_announce(versions, "v2")) is None
    outcomes = models.wait(60)
    assert [(o.record.model_version, o.refused) for o in outcomes] == [("v2", None)]
    after = _lists(models, events[100:])
    assert {r["model_version"] for r in before} == {"v1"}
    assert {r["model_version"] for r in after} == {"v2"}
    assert all(r["arm"] is None for r in before + after)


def test_shared_stream_state_and_model_totals_survive_a_swap(versions):
    cfg = _config(versions)
    live = build_recommender(cfg)
    models = ModelSet(live, ConfigModels(cfg))
    _lists(models, generated_log(50, seed=5))
    calls = live.ranker.stats.calls
    models.announce(_announce(versions, "v2"))
    models.wait(60)
    assert models.live is not live
    assert models.live.trending is live.trending and models.live.catalog is live.catalog
    assert models.live.ranker.stats.calls == calls  # the warm-up call is not the job's
    _lists(models, generated_log(20, seed=6))
    assert models.live.ranker.stats.calls > calls


def test_a_corrupt_artifact_is_refused_and_the_old_model_keeps_serving(versions, tmp_path):
    cfg = _config(versions)
    models = ModelSet(build_recommender(cfg), ConfigModels(cfg))
    bad = Path(shutil.copytree(versions["v2"], tmp_path / "v2"))
    model = bad / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    models.announce(_announce(versions, "v2", bad))
    (outcome,) = models.wait(60)
    assert outcome.refused and "sha256" in outcome.refused.lower()
    assert {r["model_version"] for r in _lists(models, generated_log(50, seed=7))} == {"v1"}


@pytest.mark.parametrize(("change", "why"), [("format_version", "v99, this job reads"),
                                             ("model_version", "holds model_version 'v3'")])
def test_an_incompatible_artifact_is_refused(versions, tmp_path, change, why):
    cfg = _config(versions)
    models = ModelSet(build_recommender(cfg), ConfigModels(cfg))
    other = Path(shutil.copytree(versions["v2"], tmp_path / "v2"))
    manifest = json.loads((other / "manifest.json").read_text())
    manifest[change] = 99 if change == "format_version" else "v3"
    (other / "manifest.json").write_text(json.dumps(manifest))
    outcome = models.load_now(_announce(versions, "v2", other))
    assert outcome.refused and why in outcome.refused
    assert models.live.artifact.model_version == "v1"


def test_the_latest_announcement_wins_over_one_still_loading(versions):
    cfg = _config(versions)
    models = ModelSet(build_recommender(cfg), ConfigModels(cfg))
    models.announce(_announce(versions, "v2"))
    models.announce(_announce(versions, "v1"))
    models.wait(60)
    assert models.live.artifact.model_version == "v1"


def test_arms_rank_with_their_versions_and_every_list_carries_its_arm(versions):
    arms = [{"name": "control", "model_version": "live", "share": 0.5},
            {"name": "treatment", "model_version": "v2", "share": 0.5}]
    cfg = _config(versions, arms=arms)
    models = ModelSet(build_recommender(cfg), ConfigModels(cfg), cfg.ab.arms, cfg.ab.salt, cfg.ranking.registry_dir)
    lists = _lists(models, generated_log(300, seed=8))
    by_arm = {(r["arm"], r["model_version"]) for r in lists}
    assert by_arm == {("control", "v1"), ("treatment", "v2")}
    for r in lists:  # each shopper's arm is the hash's, whoever asks
        assert r["arm"] == assign_arm(str(r["user_id"]), cfg.ab.arms, cfg.ab.salt).name
    # a swap of the live model moves the arm that follows it, not the pinned one
    models.announce(_announce(versions, "v2"))
    models.wait(60)
    assert {r["model_version"] for r in _lists(models, generated_log(100, seed=9))} == {"v2"}


def test_an_arm_pinned_to_a_version_missing_from_the_registry_stops_the_start(versions):
    arms = [{"name": "a", "model_version": "live", "share": 0.5}, {"name": "b", "model_version": "v9", "share": 0.5}]
    cfg = _config(versions, arms=arms)
    with pytest.raises(RegistryError, match="v9"):
        ModelSet(build_recommender(cfg), ConfigModels(cfg), cfg.ab.arms, cfg.ab.salt, cfg.ranking.registry_dir)


def test_an_announcement_for_an_unknown_arm_is_refused_at_once(versions):
    cfg = _config(versions)
    models = ModelSet(build_recommender(cfg), ConfigModels(cfg))
    outcome = models.announce(_announce(versions, "v2", arm="nope"))
    assert outcome is not None and "nope" in (outcome.refused or "")


def test_arm_shares_hold_within_a_point_over_100k_shoppers():
    arms = [ArmConfig(name="a", model_version="live", share=0.2), ArmConfig(name="b", model_version="x", share=0.3),
            ArmConfig(name="c", model_version="y", share=0.5)]
    n = 100_000
    counts = dict.fromkeys("abc", 0)
    for i in range(n):
        counts[assign_arm(f"user-{i}", arms, "salt-1").name] += 1
    for arm in arms:
        assert abs(counts[arm.name] / n - arm.share) < 0.01, counts
    # sequential numeric ids too (Taobao style), and a new salt reshuffles
    numeric = [assign_arm(str(i), arms, "salt-1").name for i in range(20_000)]
    assert abs(numeric.count("c") / 20_000 - 0.5) < 0.01
    assert numeric != [assign_arm(str(i), arms, "salt-2").name for i in range(20_000)]


def test_assignment_is_a_pure_function_of_salt_and_key():
    assert unit_hash("s", "42") == unit_hash("s", "42")
    assert 0 <= unit_hash("s", "42") < 1
    assert unit_hash("s", "42") != unit_hash("t", "42")


def test_ab_config_fails_fast_naming_the_key():
    with pytest.raises(ConfigError, match="ab"):
        load_config(overrides={"ab": {"arms": '[{"name": "a", "model_version": "live", "share": 0.7}]'}}, environ={})
    with pytest.raises(ConfigError, match="unique"):
        load_config(overrides={"ab": {"arms": [{"name": "a", "model_version": "live", "share": 0.5}] * 2}},
                    environ={})
    with pytest.raises(ConfigError, match="batching"):
        load_config(overrides={"ab": {"arms": [{"name": "a", "model_version": "live", "share": 1}]},
                               "ranking": {"batching": True}}, environ={})


def test_control_records_round_trip_and_bad_ones_say_why():
    rec = ControlRecord("activate", "v2", "/r/v2", 123, "b")
    assert decode_control(rec.to_bytes()) == rec
    for raw, why in ((b"\xc1", "not_msgpack"), (b"\x01", "not_a_map")):
        with pytest.raises(ControlRecordError, match=why):
            decode_control(raw)
    bad = msgpack.packb({"control_version": 1, "action": "delete", "model_version": "v", "path": "p",
                         "announced_at": 1})
    with pytest.raises(ControlRecordError, match="action"):
        decode_control(bad)

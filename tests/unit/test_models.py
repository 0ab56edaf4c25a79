"""Hot swap and A/B arms without Flink: udfs.models.ModelSet and udfs.ab on real artifacts."""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest

from jobs.functions import CONFIG_MODEL, OLDER_MODEL, restore_fallback
from tests.support.job_fixtures import covisit_artifact, generated_log
from udfs.ab import assign_arm, unit_hash
from udfs.artifact import add_manifest_fields, manifest_sha256
from udfs.config import ArmConfig, ConfigError, load_config
from udfs.control import ControlRecord, ControlRecordError, decode_control
from udfs.models import KEPT_ANNOUNCEMENTS, KeptAnnouncements, ModelSet, SwapOutcome
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


@pytest.fixture
def own(versions, tmp_path) -> dict[str, Path]:
    """A registry of its own (a copy of ``versions``), for a test that changes what is in it."""
    return {v: Path(shutil.copytree(p, tmp_path / "registry" / v)) for v, p in versions.items()}


def _config(versions: dict[str, Path], timeout_s: float = 60, **ab):
    overrides = {"ranking": {"artifact_dir": str(versions["v1"]), "registry_dir": str(versions["v1"].parent),
                             "provider": "cpu", "model_load_timeout_s": timeout_s}}
    if ab:
        overrides["ab"] = ab
    return load_config(overrides=overrides, environ={})


def _announce(versions: dict[str, Path], version: str, path: Path | None = None, arm: str | None = None):
    """The announcement `streamrec model activate` writes: the folder, and the sha256 of its manifest."""
    folder = path or versions[version]
    return ControlRecord("activate", version, str(folder), 1, arm, manifest_sha256(folder))


def _models(cfg, arms=()) -> ModelSet:
    return ModelSet(build_recommender(cfg), ConfigModels(cfg), registry_dir=cfg.ranking.registry_dir,
                    load_timeout_s=cfg.ranking.model_load_timeout_s, arms=arms, salt=cfg.ab.salt)


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
    models = _models(cfg)
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
    models = _models(cfg)
    live = models.live
    _lists(models, generated_log(50, seed=5))
    calls = live.ranker.stats.calls
    models.announce(_announce(versions, "v2"))
    models.wait(60)
    assert models.live is not live
    assert models.live.trending is live.trending and models.live.catalog is live.catalog
    assert models.live.ranker.stats.calls == calls  # the warm-up call is not the job's
    _lists(models, generated_log(20, seed=6))
    assert models.live.ranker.stats.calls > calls


def test_a_corrupt_artifact_is_refused_and_the_old_model_keeps_serving(own):
    cfg = _config(own)
    models = _models(cfg)
    model = own["v2"] / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    models.announce(_announce(own, "v2"))
    (outcome,) = models.wait(60)
    assert outcome.refused and "sha256" in outcome.refused.lower()
    assert {r["model_version"] for r in _lists(models, generated_log(50, seed=7))} == {"v1"}


@pytest.mark.parametrize(("change", "why"), [("format_version", "v99, this job reads"),
                                             ("model_version", "holds model_version 'v3'")])
def test_an_incompatible_artifact_is_refused(own, change, why):
    cfg = _config(own)
    models = _models(cfg)
    manifest = json.loads((own["v2"] / "manifest.json").read_text())
    manifest[change] = 99 if change == "format_version" else "v3"
    (own["v2"] / "manifest.json").write_text(json.dumps(manifest))
    (outcome,) = models.restore([_announce(own, "v2")])
    assert outcome.refused and why in outcome.refused
    assert models.live.artifact.model_version == "v1"


def test_the_latest_announcement_wins_over_one_still_loading(versions):
    cfg = _config(versions)
    models = _models(cfg)
    models.announce(_announce(versions, "v2"))
    models.announce(_announce(versions, "v1"))
    models.wait(60)
    assert models.live.artifact.model_version == "v1"


def test_arms_rank_with_their_versions_and_every_list_carries_its_arm(versions):
    arms = [{"name": "control", "model_version": "live", "share": 0.5},
            {"name": "treatment", "model_version": "v2", "share": 0.5}]
    cfg = _config(versions, arms=arms)
    models = _models(cfg, cfg.ab.arms)
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
        _models(cfg, cfg.ab.arms)


def test_an_announcement_for_an_unknown_arm_is_refused_at_once(versions):
    cfg = _config(versions)
    models = _models(cfg)
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
    rec = ControlRecord("activate", "v2", "/r/v2", 123, "b", "0" * 64)
    assert decode_control(rec.to_bytes()) == rec
    for raw, why in ((b"\xc1", "not_msgpack"), (b"\x01", "not_a_map")):
        with pytest.raises(ControlRecordError, match=why):
            decode_control(raw)
    bad = msgpack.packb({"control_version": 1, "action": "delete", "model_version": "v", "path": "p",
                         "announced_at": 1})
    with pytest.raises(ControlRecordError, match="action"):
        decode_control(bad)
    with pytest.raises(ControlRecordError, match="manifest_sha256"):
        decode_control(msgpack.packb({"control_version": 1, "action": "activate", "model_version": "v",
                                      "path": "p", "announced_at": 1, "manifest_sha256": "abc"}))


# --- a model comes from the registry only ------------------------------------------------------

def test_an_announcement_naming_a_copy_outside_the_registry_is_refused(versions, tmp_path):
    """The copy is intact and has the very manifest published: only where it lies is wrong."""
    cfg = _config(versions)
    models = _models(cfg)
    copy = Path(shutil.copytree(versions["v2"], tmp_path / "elsewhere" / "v2"))
    models.announce(_announce(versions, "v2", copy))
    (outcome,) = models.wait(60)
    assert outcome.refused and f"names {copy}, not model version 'v2'" in outcome.refused
    assert models.live.artifact.model_version == "v1"


def test_a_version_folder_that_is_a_symlink_out_of_the_registry_is_refused(own, tmp_path):
    outside = covisit_artifact(tmp_path / "outside", "v3")
    (own["v1"].parent / "v3").symlink_to(outside, target_is_directory=True)
    models = _models(_config(own))
    (outcome,) = models.restore([_announce(own, "v3", own["v1"].parent / "v3")])
    assert outcome.refused and "leads to" in outcome.refused and str(outside) in outcome.refused
    assert models.live.artifact.model_version == "v1"


def test_a_manifest_replaced_since_the_announcement_is_refused(own):
    """Files and manifest agree, so the folder verifies; the manifest is not the one announced."""
    record = _announce(own, "v2")
    add_manifest_fields(own["v2"], {"note": "replaced"})
    models = _models(_config(own))
    models.announce(record)
    (outcome,) = models.wait(60)
    assert outcome.refused and "replaced since it was published" in outcome.refused
    assert models.live.artifact.model_version == "v1"


@pytest.mark.parametrize("which", ["registry", "version"])
def test_a_registry_folder_others_can_write_is_refused(own, which):
    folder = own["v2"].parent if which == "registry" else own["v2"]
    folder.chmod(0o775)
    models = _models(_config(own))
    (outcome,) = models.restore([_announce(own, "v2")])
    assert outcome.refused and f"{folder.resolve()} is writable by group or others" in outcome.refused
    assert models.live.artifact.model_version == "v1"


def test_an_announcement_without_a_manifest_hash_is_refused_but_a_kept_one_restores(versions):
    """Records written before they carried the hash: refused from the topic, read from a checkpoint."""
    models = _models(_config(versions))
    legacy = replace(_announce(versions, "v2"), manifest_sha256=None)
    assert decode_control(legacy.to_bytes()) == legacy
    refused = models.announce(legacy)
    assert refused is not None and "no manifest_sha256" in (refused.refused or "")
    assert [o.refused for o in models.restore([legacy])] == [None]
    assert models.live.artifact.model_version == "v2"


# --- a restore never fails on a model -----------------------------------------------------------

class _Stalls(ConfigModels):
    """Loads as the config does, except that loading a folder named in ``stall`` hangs."""

    def __init__(self, config, stall: set[str]) -> None:
        super().__init__(config)
        self.stall = stall
        self.release = threading.Event()

    def load(self, path, manifest_sha256):
        if Path(path).name in self.stall:
            self.release.wait(30)
        return super().load(path, manifest_sha256)


def test_a_restore_falls_back_past_a_model_that_hangs_or_fails_within_the_timeout(own):
    cfg = _config(own, timeout_s=1)
    loader = _Stalls(cfg, {"v2"})
    models = ModelSet(build_recommender(cfg), loader, registry_dir=cfg.ranking.registry_dir, load_timeout_s=1)
    config_model = models.live
    start = time.monotonic()
    candidates = [_announce(own, "v2"), _announce(own, "v1")]
    outcomes = models.restore(candidates)
    assert time.monotonic() - start < 5
    assert [(o.record.model_version, o.refused) for o in outcomes] == [
        ("v2", "not loaded within ranking.model_load_timeout_s (1 s)"), ("v1", None)]
    assert restore_fallback(candidates, outcomes) == OLDER_MODEL  # counted as model_restore_fallbacks
    assert restore_fallback(candidates, outcomes[1:]) is None  # the newest loaded: no fallback
    assert restore_fallback([], []) is None
    assert models.live is not config_model and models.live.artifact.model_version == "v1"
    # Every candidate fails or hangs: the config's model keeps serving, and the restore still ends in time.
    config_model = build_recommender(cfg)
    (own["v1"] / "vocab.msgpack").write_bytes(b"damaged")
    models = ModelSet(config_model, loader, registry_dir=cfg.ranking.registry_dir, load_timeout_s=1)
    start = time.monotonic()
    candidates = [_announce(own, "v2"), _announce(own, "v1")]
    outcomes = models.restore(candidates)
    assert time.monotonic() - start < 2 + 3
    assert [(o.record.model_version, "sha256" in (o.refused or "")) for o in outcomes] == [
        ("v2", False), ("v1", True)]
    assert restore_fallback(candidates, outcomes) == CONFIG_MODEL
    assert models.live is config_model
    loader.release.set()


def test_a_background_load_that_hangs_is_refused_after_the_timeout(versions):
    cfg = _config(versions, timeout_s=0.5)
    loader = _Stalls(cfg, {"v2"})
    models = ModelSet(build_recommender(cfg), loader, registry_dir=cfg.ranking.registry_dir, load_timeout_s=0.5)
    assert models.announce(_announce(versions, "v2")) is None
    assert models.poll() == []
    time.sleep(0.7)
    assert [o.refused for o in models.poll()] == ["not loaded within ranking.model_load_timeout_s (0.5 s)"]
    assert models.live.artifact.model_version == "v1"
    loader.release.set()


def test_refused_announcements_never_push_the_live_one_out_of_the_kept_set(versions):
    live = _announce(versions, "v2")
    kept = KeptAnnouncements()
    kept.announced(live)
    kept.settle(SwapOutcome(live))
    for i in range(KEPT_ANNOUNCEMENTS + 2):
        bad = replace(_announce(versions, "v1"), announced_at=10 + i)
        kept.announced(bad)
        kept.settle(SwapOutcome(bad, "refused"))
    restored = KeptAnnouncements.from_bytes(kept.to_bytes())
    assert restored.candidates() == [live]


def test_only_loaded_announcements_are_kept_and_the_one_loading_is_tried_first(versions):
    v1, v2 = _announce(versions, "v1"), _announce(versions, "v2")
    kept = KeptAnnouncements()
    kept.announced(v1)
    kept.settle(SwapOutcome(v1))
    kept.announced(v2)  # a checkpoint now: v2 may have gone live before it, so it is tried first
    assert KeptAnnouncements.from_bytes(kept.to_bytes()).candidates() == [v2, v1]
    kept.settle(SwapOutcome(v2, "refused"))
    assert kept.candidates() == [v1]
    # The layout before: every announcement as it arrived, newest last.
    legacy = msgpack.packb([v1.to_bytes(), v2.to_bytes()])
    assert KeptAnnouncements.from_bytes(legacy).candidates() == [v2, v1]


def test_the_load_timeout_is_validated_naming_the_key():
    with pytest.raises(ConfigError, match=r"ranking\.model_load_timeout_s"):
        load_config(overrides={"ranking": {"model_load_timeout_s": 0}}, environ={})
    assert load_config(environ={}).ranking.model_load_timeout_s == 60

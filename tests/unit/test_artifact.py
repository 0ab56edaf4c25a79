"""The job refuses an artifact that does not match its manifest, with a clear message."""

import hashlib
import json
import os
import shutil
from dataclasses import asdict

import pytest

from jobs.layout import required_jars
from tests.support.job_fixtures import generated_log
from tests.support.onnx_fixtures import covisit_scorer
from udfs import artifact as artifact_module
from udfs.artifact import REQUIRED_FIELDS, ArtifactError, Manifest, load_artifact, verify_manifest, write_artifact
from udfs.candidates import build_tables
from udfs.config import load_config
from udfs.events import Event
from udfs.features import Vocab
from udfs.runtime import build_recommender, state_limits
from udfs.state import StateLimits, UserState


@pytest.fixture
def artifact_copy(fixture_artifact, tmp_path):
    return shutil.copytree(fixture_artifact, tmp_path / "art")


def test_valid_artifact_loads(artifact_copy):
    a = load_artifact(artifact_copy)
    assert a.model_version == "fixture-covisit" and a.seq_len == 50 and a.tables.trending


def test_tampered_file_is_named(artifact_copy):
    with (artifact_copy / "tables.msgpack").open("ab") as f:
        f.write(b"x")
    with pytest.raises(ArtifactError, match="tables.msgpack does not match its manifest"):
        load_artifact(artifact_copy)


def test_missing_file_is_named(artifact_copy):
    (artifact_copy / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="model.onnx listed in the manifest is missing"):
        load_artifact(artifact_copy)


def test_missing_dir_says_how_to_train(tmp_path):
    with pytest.raises(ArtifactError, match="streamrec train"):
        load_artifact(tmp_path / "nope")


def test_feature_layout_mismatch_is_refused(artifact_copy):
    m = json.loads((artifact_copy / "manifest.json").read_text())
    m["dense_features"] = m["dense_features"][:-1]
    (artifact_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="retrain"):
        load_artifact(artifact_copy)


def edit_manifest(art, change):
    m = json.loads((art / "manifest.json").read_text())
    change(m)
    (art / "manifest.json").write_text(json.dumps(m))


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("field", REQUIRED_FIELDS)
def test_missing_required_field_is_named(artifact_copy, field):
    edit_manifest(artifact_copy, lambda m: m.pop(field))
    with pytest.raises(ArtifactError, match=f"lacks required field '{field}'"):
        verify_manifest(artifact_copy)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("model_version", "", "'model_version' must be a non-empty string"),
    ("seq_len", "50", "'seq_len' must be a positive integer"),
    ("seq_len", 0, "'seq_len' must be a positive integer"),
    ("opset", True, "'opset' must be a positive integer"),
    ("files", ["model.onnx"], "'files' must map file names to sha256s"),
])
def test_required_field_of_the_wrong_type_is_named(artifact_copy, field, value, message):
    edit_manifest(artifact_copy, lambda m: m.update({field: value}))
    with pytest.raises(ArtifactError, match=message):
        load_artifact(artifact_copy)


@pytest.mark.parametrize("name", ["model.onnx", "vocab.msgpack", "tables.msgpack"])
def test_every_loaded_file_must_be_listed(artifact_copy, name):
    """Old code hashed only what was listed, then read vocab and tables unhashed."""
    edit_manifest(artifact_copy, lambda m: m["files"].pop(name))
    with pytest.raises(ArtifactError, match=f"lists no {name}: every file the job loads must be hashed"):
        load_artifact(artifact_copy)


def test_a_listed_file_without_a_sha256_is_refused(artifact_copy):
    edit_manifest(artifact_copy, lambda m: m["files"].update({"model.onnx": None}))
    with pytest.raises(ArtifactError, match="'model.onnx' has no sha256"):
        load_artifact(artifact_copy)


@pytest.fixture
def outside(tmp_path):
    """A file beside the artifact directory, not in it."""
    f = tmp_path / "outside.bin"
    f.write_bytes(b"not part of the artifact")
    return f


@pytest.mark.parametrize(("listed", "problem"), [
    ("ABSOLUTE", "is an absolute path"),
    ("../outside.bin", "has a '..' component"),
    ("./../outside.bin", "has a '..' component"),
    ("sub/inner.bin", "has a path separator"),
    ("sub\\inner.bin", "has a path separator"),
    ("..", "is '..'"),
    (".hidden", "is not a plain file name"),
])
def test_listed_names_cannot_leave_the_artifact_directory(artifact_copy, outside, listed, problem):
    (artifact_copy / "sub").mkdir()
    (artifact_copy / "sub" / "inner.bin").write_bytes(outside.read_bytes())
    (artifact_copy / ".hidden").write_bytes(outside.read_bytes())
    name = str(outside) if listed == "ABSOLUTE" else listed
    # The right hash: old code read the file and accepted it.
    edit_manifest(artifact_copy, lambda m: m["files"].update({name: sha(outside)}))
    with pytest.raises(ArtifactError, match=f"listed file .* {problem}.*; artifact files must be plain names"):
        verify_manifest(artifact_copy)


@pytest.mark.parametrize("target", ["outside", "inside"])
def test_a_listed_symlink_is_refused(artifact_copy, outside, target):
    """Same content, so the hash matches: old code followed the link and accepted it."""
    real = artifact_copy / "tables.msgpack"
    dest = outside if target == "outside" else artifact_copy / "tables.real"
    shutil.copyfile(real, dest)
    real.unlink()
    real.symlink_to(dest)
    with pytest.raises(ArtifactError, match="tables.msgpack is a symlink"):
        load_artifact(artifact_copy)
    with pytest.raises(ArtifactError, match="tables.msgpack is a symlink"):
        verify_manifest(artifact_copy)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_listed_fifo_is_refused_without_blocking(artifact_copy):
    (artifact_copy / "model.pt").unlink(missing_ok=True)
    os.mkfifo(artifact_copy / "model.pt")
    edit_manifest(artifact_copy, lambda m: m["files"].update({"model.pt": "0" * 64}))
    with pytest.raises(ArtifactError, match="model.pt is not a regular file"):
        verify_manifest(artifact_copy)


def test_write_artifact_refuses_a_name_outside_the_directory(fixture_artifact, tmp_path):
    a = load_artifact(fixture_artifact)
    with pytest.raises(ValueError, match="has a '..' component"):
        write_artifact(tmp_path / "w", fixture_artifact / "model.onnx", a.vocab, a.tables,
                       {"model_version": "x", "seq_len": 50, "opset": 17},
                       extra_files={"../escape.bin": fixture_artifact / "vocab.msgpack"})


class SwapAfterHash:
    """A stand-in for ``hashlib`` in udfs.artifact: the moment a file's digest is taken,
    the file on disk is replaced by other, valid content (a deploy racing the job).
    Code that reads a file again after hashing it loads the replacement."""

    def __init__(self, swaps):
        self.swaps = dict(swaps)  # digest -> (path, new content)

    def sha256(self, data=b""):
        h, swaps = hashlib.sha256(data), self.swaps

        class Hash:
            def update(self, chunk):
                h.update(chunk)

            def hexdigest(self):
                digest = h.hexdigest()
                if digest in swaps:
                    path, content = swaps.pop(digest)
                    path.write_bytes(content)
                return digest

        return Hash()


@pytest.fixture
def swaps(artifact_copy, tmp_path):
    """Other valid vocab, tables and model (seq_len 8, not 50) for each loaded file."""
    log = generated_log(500, seed=99)
    other_vocab = Vocab.build({e.item_id: 5 for e in log[:50]}, {e.category_id: 5 for e in log[:50]}, 2)
    other_model = covisit_scorer(tmp_path / "other.onnx", seq_len=8).read_bytes()
    new = {"vocab.msgpack": other_vocab.to_bytes(), "tables.msgpack": build_tables(log).to_bytes(),
           "model.onnx": other_model}
    for name, content in new.items():
        assert content != (artifact_copy / name).read_bytes()
    return SwapAfterHash({sha(artifact_copy / n): (artifact_copy / n, c) for n, c in new.items()})


def test_the_loaded_bytes_are_the_hashed_bytes(artifact_copy, swaps, monkeypatch):
    want = {n: (artifact_copy / n).read_bytes() for n in ("vocab.msgpack", "tables.msgpack", "model.onnx")}
    monkeypatch.setattr(artifact_module, "hashlib", swaps)
    a = load_artifact(artifact_copy)
    assert not swaps.swaps  # every file was replaced on disk right after it was hashed
    assert a.vocab.to_bytes() == want["vocab.msgpack"]
    assert a.tables.to_bytes() == want["tables.msgpack"]
    assert a.model_bytes == want["model.onnx"]
    assert (artifact_copy / "model.onnx").read_bytes() != want["model.onnx"]


def test_the_session_runs_the_hashed_model(artifact_copy, swaps, monkeypatch):
    """The replacement model takes seq_len 8: had the session read model.onnx again,
    every list would be an inference_error fallback."""
    monkeypatch.setattr(artifact_module, "hashlib", swaps)
    cfg = load_config(environ={}, overrides={"ranking": {"artifact_dir": str(artifact_copy), "provider": "cpu",
                                                          "top_k": 5}})
    rec = build_recommender(cfg)
    assert not swaps.swaps
    item = next(iter(rec.artifact.tables.covisit))
    st = UserState()
    ev = Event(1, item, rec.artifact.tables.item_category[item], "pv", 1_700_000_000_000)
    rec.apply(st, ev)
    req = rec.request(st, ev)
    out = rec.recommend([req])[0]
    assert out["fallback"] is None
    assert out["scores"] == sorted(out["scores"], reverse=True) and len(out["items"]) == 5


def test_missing_connector_jars_say_how_to_fetch(monkeypatch, tmp_path):
    monkeypatch.setenv("STREAMREC_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="make deps"):
        required_jars()


@pytest.mark.parametrize(("setting", "expected_ms"), [("auto", 40 * 86_400_000), (3600, 3_600_000)])
def test_the_state_window_follows_the_artifact_unless_configured(setting, expected_ms):
    """``state.seq_window_s = "auto"`` (the default) keeps the window the artifact's training log
    derived; a number is the operator's own."""
    manifest = Manifest({"seq_len": 8, "config": {"state_limits": asdict(StateLimits(
        max_seq_len=8, seq_window_ms=40 * 86_400_000))}})
    limits = state_limits(load_config(None, {"state": {"seq_window_s": setting}}), manifest)
    assert limits.seq_window_ms == expected_ms

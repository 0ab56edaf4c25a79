"""The job refuses an artifact that does not match its manifest, with a clear message."""

import json
import shutil

import pytest

from jobs.layout import required_jars
from udfs.artifact import ArtifactError, load_artifact


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


def test_missing_connector_jars_say_how_to_fetch(monkeypatch, tmp_path):
    monkeypatch.setenv("STREAMREC_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="make deps"):
        required_jars()

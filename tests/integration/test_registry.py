"""The model registry's writer (streamrec.registry_writer) and `streamrec model`: verified, atomic,
never-replacing publication; history and rollback order; the control record on a real broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamrec import registry_writer as writer
from streamrec.cli import main
from streamrec.kafka_io import read_topic
from tests.support.job_fixtures import generated_log
from tests.support.onnx_fixtures import covisit_scorer
from udfs.artifact import MODEL_FILE, add_manifest_fields, sha256_file, verify_manifest, write_artifact
from udfs.candidates import build_tables
from udfs.control import CONTROL_KEY, decode_control
from udfs.features import Vocab
from udfs.registry import HISTORY_FILE, RegistryError, history, live_version, verified_version, versions


def make_artifact(d: Path, version: str, seed: int = 3) -> Path:
    """A small, complete artifact named ``version``: tables and vocabulary of a generated log
    (``seed`` changes them, so two seeds give two different sets of files)."""
    log = generated_log(1500, seed=seed)
    items: dict = {}
    cats: dict = {}
    for e in log:
        items[e.item_id] = items.get(e.item_id, 0) + 1
        cats[e.category_id] = cats.get(e.category_id, 0) + 1
    model = covisit_scorer(d / f"{version}-{seed}.onnx", seq_len=50)
    return write_artifact(d / f"{version}-{seed}", model, Vocab.build(items, cats, 2), build_tables(log),
                          {"model_version": version, "seq_len": 50, "opset": 17})


def test_publish_copies_a_verified_artifact(tmp_path: Path) -> None:
    art = make_artifact(tmp_path, "v1")
    reg = tmp_path / "reg"
    path = writer.publish(reg, art)
    assert path == (reg / "v1").resolve()
    assert path.is_absolute()
    found, manifest = verified_version(reg, "v1")
    assert manifest.model_version == "v1"
    assert sorted(p.name for p in found.iterdir()) == sorted(p.name for p in art.iterdir())
    assert versions(reg) == ["v1"]
    assert live_version(reg) is None  # publishing alone announces nothing


def test_corrupt_artifact_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    art = make_artifact(tmp_path, "v1")
    data = bytearray((art / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (art / MODEL_FILE).write_bytes(bytes(data))
    reg = tmp_path / "reg"
    with pytest.raises(RegistryError, match=r"not published: .*model\.onnx does not match its manifest"):
        writer.publish(reg, art)
    assert not reg.exists() or list(reg.iterdir()) == []


def test_republishing_the_same_version_is_a_no_op(tmp_path: Path) -> None:
    art = make_artifact(tmp_path, "v1")
    reg = tmp_path / "reg"
    first = writer.publish(reg, art)
    stamp = (first / "manifest.json").stat().st_mtime_ns
    assert writer.publish(reg, art) == first
    assert (first / "manifest.json").stat().st_mtime_ns == stamp
    assert [p.name for p in reg.iterdir()] == ["v1"]  # no temporary folder left behind


def test_a_version_name_taken_by_other_files_is_refused(tmp_path: Path) -> None:
    reg = tmp_path / "reg"
    writer.publish(reg, make_artifact(tmp_path, "v1", seed=3))
    before = (reg / "v1" / "tables.msgpack").read_bytes()
    with pytest.raises(RegistryError, match=r"'v1' is already in the registry .*tables\.msgpack.* differ"):
        writer.publish(reg, make_artifact(tmp_path, "v1", seed=4))
    assert (reg / "v1" / "tables.msgpack").read_bytes() == before


def test_history_and_rollback_walk_back(tmp_path: Path) -> None:
    reg = tmp_path / "reg"
    for v in ("a", "b", "c"):
        writer.publish(reg, make_artifact(tmp_path, v))
    with pytest.raises(RegistryError, match="no version was ever announced"):
        writer.rollback(reg)
    writer.activate(reg, "a")
    with pytest.raises(RegistryError, match="'a' is the only version that was live"):
        writer.rollback(reg)
    for v in ("b", "b", "c"):  # b twice: a repeated announcement is not a step back
        writer.activate(reg, v)
    sent: list = []
    assert writer.rollback(reg, sent.append) == "b"
    assert live_version(reg) == "b"
    assert writer.rollback(reg, sent.append) == "a"  # back in time, not to c
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        writer.rollback(reg)
    assert [(a.model_version, a.action) for a in history(reg)] == [
        ("a", "activate"), ("b", "activate"), ("b", "activate"), ("c", "activate"),
        ("b", "rollback"), ("a", "rollback")]
    assert [r.model_version for r in sent] == ["b", "a"]
    assert all(r.action == "activate" and Path(r.path) == (reg / r.model_version).resolve() for r in sent)
    # Each names the manifest it announces: the job installs that one only (tests/unit/test_models.py).
    assert [r.manifest_sha256 for r in sent] == [sha256_file(reg / v / "manifest.json") for v in ("b", "a")]
    assert [json.loads(line)["model_version"] for line in (reg / HISTORY_FILE).read_text().splitlines()] == [
        a.model_version for a in history(reg)]


def test_a_failed_announcement_is_not_recorded(tmp_path: Path) -> None:
    reg = tmp_path / "reg"
    writer.publish(reg, make_artifact(tmp_path, "v1"))

    def broker_down(record: object) -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        writer.activate(reg, "v1", broker_down)
    assert history(reg) == []


def test_rollback_refuses_a_damaged_target(tmp_path: Path) -> None:
    reg = tmp_path / "reg"
    for v in ("a", "b"):
        writer.publish(reg, make_artifact(tmp_path, v))
        writer.activate(reg, v)
    (reg / "a" / "vocab.msgpack").write_bytes(b"damaged")
    with pytest.raises(RegistryError, match="'a' in .*vocab.msgpack does not match"):
        writer.rollback(reg)
    assert live_version(reg) == "b"


def test_cli_publish_list_rollback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = tmp_path / "reg"
    arts = [make_artifact(tmp_path, v) for v in ("v1", "v2")]
    for art in arts:
        assert main(["model", "publish", "--artifact", str(art), "--registry", str(reg), "--no-announce"]) == 0
    writer.activate(reg, "v1")
    writer.activate(reg, "v2")
    capsys.readouterr()
    assert main(["model", "list", "--registry", str(reg), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["model_version"], r["live"]) for r in rows] == [("v1", False), ("v2", True)]
    assert main(["model", "rollback", "--registry", str(reg), "--no-announce"]) == 0
    assert json.loads(capsys.readouterr().out)["live"] == "v1"
    assert main(["model", "list", "--registry", str(reg)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line[:4] for line in table[1:]] == ["* v1", "  v2"]
    (arts[0] / MODEL_FILE).write_bytes(b"not a model")
    assert main(["model", "publish", "--artifact", str(arts[0]), "--registry", str(tmp_path / "r2"),
                 "--no-announce"]) == 2
    assert "model.onnx does not match its manifest" in capsys.readouterr().err


@pytest.mark.kafka
def test_publish_announces_on_the_control_topic(kafka_broker, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI creates the control topic (the test broker, like the local one, does not create
    topics on first write) and the record there names the version folder in the registry."""
    topic = f"model-control-{tmp_path.name}".lower()
    reg = tmp_path / "reg"
    art = make_artifact(tmp_path, "v1")
    assert main(["model", "publish", "--artifact", str(art), "--registry", str(reg),
                 "--control-topic", topic, "--bootstrap-servers", kafka_broker.bootstrap]) == 0
    assert json.loads(capsys.readouterr().out)["announced"] is True
    records = read_topic(kafka_broker.bootstrap, topic, idle_timeout_s=20)
    assert len(records) == 1
    rec = decode_control(records[0])
    assert (rec.action, rec.model_version, rec.arm) == ("activate", "v1", None)
    assert Path(rec.path) == (reg / "v1").resolve()
    assert [a.model_version for a in history(reg)] == ["v1"]
    assert [a.at for a in history(reg)] == [rec.announced_at]
    from kafka import KafkaConsumer, TopicPartition

    cons = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, group_id=None,
                         auto_offset_reset="earliest", consumer_timeout_ms=10000)
    try:
        cons.assign([TopicPartition(topic, 0)])
        msg = next(iter(cons))
        assert msg.key == CONTROL_KEY.encode()
    finally:
        cons.close()


def test_manifest_fields_can_be_added_but_not_what_loaders_read(tmp_path: Path) -> None:
    art = make_artifact(tmp_path, "v1")
    files = verify_manifest(art)["files"]
    assert add_manifest_fields(art, {"retrain": {"decision": "publish"}})["retrain"] == {"decision": "publish"}
    assert verify_manifest(art)["files"] == files
    for field in ("seq_len", "files", "retrain"):  # read by the loaders / already there
        with pytest.raises(ValueError, match=f"will not set '{field}'"):
            add_manifest_fields(art, {field: 1})


def test_an_artifact_retrain_kept_back_needs_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`streamrec retrain` stores its decision in the new manifest; publishing by hand an artifact
    it kept back (worse than the live version) is refused, naming the figures, unless --force."""
    art = make_artifact(tmp_path, "v2")
    add_manifest_fields(art, {"retrain": {"decision": writer.KEEP_LIVE,
                                          "new": {"model_version": "v2", "metrics": {"ndcg@10": 0.11}},
                                          "live": {"model_version": "v1", "metrics": {"ndcg@10": 0.12}}}})
    reg = tmp_path / "reg"
    with pytest.raises(RegistryError, match=r"retrain kept it back: ndcg@10 0\.11 against the live v1's 0\.12"):
        writer.publish(reg, art)
    assert not reg.exists() or versions(reg) == []
    assert main(["model", "publish", "--artifact", str(art), "--registry", str(reg), "--no-announce"]) == 2
    assert "--force publishes it anyway" in capsys.readouterr().err
    assert main(["model", "publish", "--artifact", str(art), "--registry", str(reg), "--no-announce",
                 "--force"]) == 0
    assert versions(reg) == ["v2"]
    # One retrain decided to publish: no flag needed.
    ok = make_artifact(tmp_path, "v3", seed=4)
    add_manifest_fields(ok, {"retrain": {"decision": writer.RETRAIN_PUBLISH}})
    assert writer.publish(reg, ok) == (reg / "v3").resolve()

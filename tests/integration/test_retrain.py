"""`streamrec retrain`: train on the last hours, compare with the live version on the newest
held-out slice, publish only when not worse. Tiny training settings on a seeded generated log;
"worse" is a real model: one trained on a few hours, against a live one trained on every
event before the same split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from model_export.dataset import default_until
from model_export.train import train_model
from streamrec import registry_writer as writer
from streamrec.cli import main
from streamrec.lab.generator import generate_events
from streamrec.retrain import KEEP_LIVE, METRIC, PUBLISH, decode_records, drop_stray, retrain, window
from udfs.artifact import read_manifest, verify_manifest
from udfs.events import Event, encode_erase, encode_event
from udfs.logs import write_events_msgpack
from udfs.registry import history, live_version, versions

T0 = 1_700_000_000_000
HOUR = 3_600_000
TINY: dict[str, Any] = {"epochs": 1, "dim": 8, "hidden": (16,), "n_candidates": 30, "hard_negatives": 10,
                        "popularity_negatives": 2, "parity_requests": 100, "progress": False, "threads": 1}


@pytest.fixture(scope="module")
def log() -> list[Event]:
    return sorted(generate_events(6000, n_users=100, n_items=600, n_categories=12, seed=3, start_ts_ms=T0,
                                  duration_s=2 * 86400), key=lambda e: e.ts)


def test_window_counts_back_from_the_newest_event(log: list[Event]) -> None:
    win = window(list(reversed(log)), 4)  # any input order: the window is in event-time order
    assert sorted(win) == sorted(e for e in log if e.ts >= log[-1].ts - 4 * HOUR)
    assert [e.ts for e in win] == sorted(e.ts for e in win)
    assert win[-1].ts == log[-1].ts and win[0].ts >= log[-1].ts - 4 * HOUR
    with pytest.raises(ValueError, match="--hours must be positive"):
        window(log, 0)


def test_an_erased_shoppers_events_before_the_request_never_reach_training(log: list[Event]) -> None:
    part = log[:200]
    shopper = part[0].user_id
    cut = max(i for i, e in enumerate(part) if e.user_id == shopper) // 2 + 1
    raw = [encode_event(e) for e in part[:cut]] + [encode_erase(str(shopper))] + [encode_event(e) for e in part[cut:]]
    events, bad, _ = decode_records(raw)
    assert bad == 0
    assert events == [e for i, e in enumerate(part) if e.user_id != shopper or i >= cut]
    assert any(e.user_id == shopper for e in part[:cut]) and any(e.user_id == shopper for e in events)


def test_bad_topic_records_are_counted_and_stray_times_dropped(log: list[Event]) -> None:
    raw = [encode_event(e) for e in log[:50]] + [b"\x93garbage", b"not msgpack at all \xff"]
    events, bad, reasons = decode_records(raw)
    assert events == log[:50]
    assert bad == 2 and len(reasons) == 2
    far = log[10]._replace(ts=log[-1].ts + 365 * 24 * HOUR)  # a clock gone wrong: a year ahead
    kept, stray = drop_stray([*log, far])
    assert stray >= 1 and far not in kept
    assert window(kept, 4)[-1].ts == log[-1].ts


def test_no_live_version_publishes_and_better_replaces(log: list[Event], tmp_path: Path) -> None:
    """First version: the first 8 hours, into an empty registry. Then the whole log: its held-out
    slice lies after everything the first version saw, and the new model, trained on two days,
    is compared with it there."""
    reg = tmp_path / "reg"
    sent: list = []
    early = [e for e in log if e.ts < log[0].ts + 8 * HOUR]
    first = retrain(early, train_model, hours=8, registry_dir=reg, out_dir=tmp_path / "a", source="test",
                    train_kwargs=TINY, announce=sent.append)
    assert first["live"] is None and first["decision"] == PUBLISH
    v1 = first["new"]["model_version"]
    assert live_version(reg) == v1

    second = retrain(log, train_model, hours=48, registry_dir=reg, out_dir=tmp_path / "b", source="test",
                     train_kwargs=TINY, announce=sent.append)
    v2 = second["new"]["model_version"]
    assert second["live"]["model_version"] == v1
    assert second["live"]["saw_held_out"] is False
    assert second["new"]["metrics"][METRIC] >= second["live"]["metrics"][METRIC]
    assert second["decision"] == PUBLISH
    assert live_version(reg) == v2 and sorted(versions(reg)) == sorted([v1, v2])
    assert [r.model_version for r in sent] == [v1, v2]
    stored = verify_manifest(reg / v2)["retrain"]
    assert stored["decision"] == PUBLISH
    assert stored["live"] == second["live"] and stored["new"] == second["new"]
    assert stored["held_out"]["since_ms"] == default_until(window(log, 48))


def test_new_metrics_are_the_training_evaluation(log: list[Event], tmp_path: Path) -> None:
    """The comparison scores the new artifact on the very requests train_model held out."""
    report = retrain(log, train_model, hours=12, registry_dir=tmp_path / "reg", out_dir=tmp_path / "a", source="test",
                     train_kwargs=TINY, publish=False)
    trained = read_manifest(tmp_path / "a").metrics
    model = trained["rankers"]["model"]
    assert report["new"]["metrics"]["requests"] == trained["requests"]
    for k in ("hr@10", "ndcg@10", "mrr", "novel_hr@10"):
        assert report["new"]["metrics"][k] == pytest.approx(model[k])
    assert report["published"] is None and versions(tmp_path / "reg") == []


def test_worse_model_is_not_published(log: list[Event], tmp_path: Path) -> None:
    """Live: every event before the split of the last 4 hours. New: those 4 hours alone, whose
    tables know few items, so fewer of the next items are even candidates."""
    reg = tmp_path / "reg"
    until = default_until(window(log, 4))
    live_dir = train_model(log, until_ms=until, out_dir=tmp_path / "live", seed=0, **TINY)
    live = writer.publish(reg, live_dir).name
    writer.activate(reg, live)
    sent: list = []
    report = retrain(log, train_model, hours=4, registry_dir=reg, out_dir=tmp_path / "new", source="test",
                     train_kwargs=TINY, announce=sent.append)
    assert report["held_out"]["since_ms"] == until
    new, old = report["new"]["metrics"], report["live"]["metrics"]
    assert new["requests"] == old["requests"] > 0  # one slice, the same requests
    assert new["candidate_recall"] < old["candidate_recall"]
    assert new[METRIC] < old[METRIC]
    assert report["decision"] == KEEP_LIVE and report["published"] is None
    assert sent == [] and live_version(reg) == live and versions(reg) == [live]
    assert [a.model_version for a in history(reg)] == [live]
    kept = verify_manifest(tmp_path / "new")  # kept for inspection, with the comparison
    assert kept["retrain"]["decision"] == KEEP_LIVE
    assert kept["retrain"]["live"]["metrics"] == old


def test_cli_retrain_from_file(log: list[Event], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI path: events file, registry flag, printed comparison and the JSON copy; --no-announce
    publishes the folder without making it live (no broker needed)."""
    import streamrec.cli.model_commands as cli

    real = cli.retrain
    monkeypatch.setattr(cli, "retrain", lambda *a, **kw: real(*a, **{**kw, "train_kwargs": {
        **TINY, **kw["train_kwargs"], "progress": False}}))
    events = tmp_path / "log.msgpack"
    write_events_msgpack(log, events)
    reg, out = tmp_path / "reg", tmp_path / "cmp.json"
    assert main(["retrain", "--events", str(events), "--format", "generated", "--hours", "12", "--registry",
                 str(reg), "--out", str(tmp_path / "new"), "--device", "cpu", "--no-announce",
                 "--json-out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert f"decision: {PUBLISH}" in printed and "not announced" in printed
    assert report["new"]["model_version"] in printed
    assert versions(reg) == [report["new"]["model_version"]] and live_version(reg) is None
    assert main(["retrain", "--hours", "12", "--registry", str(reg)]) == 2
    assert "exactly one of --from-topic TOPIC and --events FILE" in capsys.readouterr().err


@pytest.mark.kafka
def test_cli_retrain_from_topic(kafka_broker, unique_topic, log: list[Event], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Read the input topic to its end, skip what is not an event, compare, publish nothing (--dry-run)."""
    import streamrec.cli.model_commands as cli
    from streamrec.kafka_io import produce, replay

    real = cli.retrain
    monkeypatch.setattr(cli, "retrain", lambda *a, **kw: real(*a, **{**kw, "train_kwargs": {
        **TINY, **kw["train_kwargs"], "progress": False}}))
    topic = unique_topic("events", partitions=2)
    replay(log, kafka_broker.bootstrap, topic)
    produce(kafka_broker.bootstrap, topic, [(b"x", b"\xc1 not an event")])
    reg, out = tmp_path / "reg", tmp_path / "cmp.json"
    assert main(["retrain", "--from-topic", topic, "--hours", "12", "--registry", str(reg), "--bootstrap-servers",
                 kafka_broker.bootstrap, "--out", str(tmp_path / "new"), "--device", "cpu", "--dry-run",
                 "--json-out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"{len(log) + 1} records from {topic}, 1 not events" in captured.err
    report = json.loads(out.read_text())
    assert report["window"]["events"] == len(window(log, 12))
    assert report["published"] is None and versions(reg) == []

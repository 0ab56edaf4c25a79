"""Progress bars: drawn only on a terminal, off with --no-progress, moved in steps (cheap per record)."""

from __future__ import annotations

import io

import pytest

from streamrec import progress
from streamrec.cli import build_parser
from streamrec.progress import Progress
from udfs.kafka_clients import KafkaClients


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def on():
    progress.set_enabled(True)
    yield
    progress.set_enabled(True)


def _tty(monkeypatch) -> _Tty:
    """A terminal as stderr (set in the test body: pytest's capture resets sys.stderr between phases)."""
    out = _Tty()
    monkeypatch.setattr("sys.stderr", out)
    return out


def test_bar_moves_every_n_records_and_counts_all_at_close(on, monkeypatch):
    tty = _tty(monkeypatch)
    bar = Progress("replay", total=2500, every=1000)
    assert bar._bar is not None
    for _ in range(999):
        bar.tick()
    assert bar._bar.n == 0  # nothing drawn per record
    bar.tick()
    assert bar._bar.n == 1000
    for _ in range(1500):
        bar.tick()
    assert bar._bar.n == 2000
    inner = bar._bar
    bar.close()
    assert inner.n == 2500 and "replay" in tty.getvalue()


def test_no_bar_off_a_terminal_or_when_switched_off(on, monkeypatch):
    tty = _tty(monkeypatch)
    progress.set_enabled(False)
    bar = Progress("x", total=10)
    bar.tick(10)
    bar.close()
    assert bar._bar is None and tty.getvalue() == ""
    progress.set_enabled(True)
    monkeypatch.setattr("sys.stderr", io.StringIO())  # a pipe or a log file
    assert Progress("x")._bar is None


@pytest.mark.parametrize("argv", [["replay", "--events", "f"], ["bench"]])
def test_no_progress_flag(argv):
    parser = build_parser()
    assert parser.parse_args(argv).no_progress is False
    assert parser.parse_args([*argv, "--no-progress"]).no_progress is True


class _FakeProducer:
    def __init__(self) -> None:
        self.sent = 0

    def send(self, topic, key=None, value=None) -> None:
        self.sent += 1

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_produce_draws_the_bar_on_a_terminal_and_not_otherwise(on, monkeypatch):
    from streamrec import kafka_io

    fake = _FakeProducer()
    monkeypatch.setattr(KafkaClients, "producer", lambda self, **k: fake)
    records = [(b"k", b"v")] * 2500
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert kafka_io.produce("b", "t", records, progress="replay -> t").sent == 2500  # off a terminal: no bar
    tty = _tty(monkeypatch)
    assert kafka_io.produce("b", "t", iter(records), progress="replay -> t", total=2500).sent == 2500
    assert fake.sent == 5000
    drawn = tty.getvalue()
    assert "replay -> t" in drawn and "2.50k/2.50k" in drawn  # the total, and every record counted at the end

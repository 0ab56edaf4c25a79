"""Training device selection (`--device`): every branch is checked without a GPU."""

from __future__ import annotations

import pytest

from model_export.train import resolve_device
from streamrec.cli import build_parser


@pytest.mark.parametrize(
    ("mode", "cuda_available", "expected"),
    [
        ("auto", True, "cuda"),
        ("auto", False, "cpu"),
        ("cpu", True, "cpu"),
        ("cpu", False, "cpu"),
        ("cuda", True, "cuda"),
    ],
)
def test_resolve_device(mode, cuda_available, expected):
    assert resolve_device(mode, cuda_available) == expected


def test_cuda_without_a_gpu_is_an_error_naming_the_flag():
    with pytest.raises(ValueError, match="--device cuda"):
        resolve_device("cuda", False)


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="--device must be one of auto, cpu, cuda"):
        resolve_device("gpu", True)


def test_train_model_refuses_cuda_before_any_work(monkeypatch, tmp_path):
    torch = pytest.importorskip("torch")
    from model_export.train import train_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_events():
        raise AssertionError("events were read before the device was checked")
        yield

    with pytest.raises(ValueError, match="--device cuda"):
        train_model(no_events(), out_dir=tmp_path, device="cuda", progress=False)
    assert not any(tmp_path.iterdir())


def test_cli_flag_and_env_fallback(monkeypatch, capsys):
    monkeypatch.delenv("STREAMREC_TRAIN_DEVICE", raising=False)
    assert build_parser().parse_args(["train", "--events", "x.csv"]).device == "auto"
    assert build_parser().parse_args(["train", "--events", "x.csv", "--device", "cpu"]).device == "cpu"
    monkeypatch.setenv("STREAMREC_TRAIN_DEVICE", "cuda")
    assert build_parser().parse_args(["train", "--events", "x.csv"]).device == "cuda"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--device" in out and "[env: STREAMREC_TRAIN_DEVICE]" in out

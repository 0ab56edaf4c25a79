"""Bench flags derive from their settings dataclasses: each setting declared once, its default, type and
help coming from the dataclass, its variable from the one naming rule."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamrec.cli import build_parser
from streamrec.cli.bench_commands import BENCH_FLAGS, LOAD_FLAGS, SCALE_FLAGS, SERVE_FLAGS
from streamrec.cli.settings_flags import SettingsFlags, add_settings_flags, parse_text, settings_from_args
from udfs.config import ConfigError

SPECS = {"bench": (BENCH_FLAGS, SCALE_FLAGS), "bench-serve": (SERVE_FLAGS,), "bench-load": (LOAD_FLAGS,)}


@pytest.mark.parametrize("command", sorted(SPECS))
def test_no_flag_given_builds_each_dataclass_at_its_own_defaults(command):
    args = build_parser().parse_args([command])
    for spec in SPECS[command]:
        out = Path(args.out)
        built = settings_from_args(spec, args, out_dir=out)
        assert built == spec.settings(out_dir=out)


def test_flags_and_variables_reach_the_fields_in_their_types(monkeypatch):
    monkeypatch.setenv("STREAMREC_BENCH_WINDOW_S", "30")
    monkeypatch.setenv("STREAMREC_BENCH_SCALE_BACKENDS", "rocksdb")
    args = build_parser().parse_args(["bench", "--parallelisms", "1,2,4", "--batching-paced", "off",
                                      "--artifact", "a/b", "--scale-kill-at", "0.5"])
    bench = settings_from_args(BENCH_FLAGS, args)
    scale = settings_from_args(SCALE_FLAGS, args, out_dir=bench.out_dir)
    assert (bench.parallelisms, bench.batching_paced, bench.artifact, bench.window_s) == ((1, 2, 4), False,
                                                                                          Path("a/b"), 30.0)
    assert (scale.backends, scale.kill_at) == (("rocksdb",), 0.5)


@pytest.mark.parametrize(("spec", "flag", "text"), [(BENCH_FLAGS, "--events", "many"),
                                                    (BENCH_FLAGS, "--batching-paced", "maybe"),
                                                    (SCALE_FLAGS, "--scale-kill-at", "half")])
def test_a_text_that_does_not_convert_names_its_flag(spec, flag, text):
    args = build_parser().parse_args(["bench", flag, text])
    with pytest.raises(ConfigError, match=flag):
        settings_from_args(spec, args, out_dir=Path("x"))


def test_every_field_needs_a_docstring_for_its_help():
    @dataclass(frozen=True)
    class Undocumented:
        out_dir: Path
        """Where."""
        rate: float = 1.0

    import argparse

    with pytest.raises(TypeError, match="Undocumented.rate has no docstring"):
        add_settings_flags(argparse.ArgumentParser(), SettingsFlags(Undocumented, "x", skip=frozenset({"out_dir"})))


def test_texts_convert_by_the_annotation():
    assert parse_text("", Path | None, "--a") is None
    assert parse_text("1.5, 2", tuple[float, ...], "--a") == (1.5, 2.0)
    assert parse_text("", tuple[int, ...], "--a") == ()
    assert parse_text("ON", bool, "--a") is True
    assert [f.name for f in dataclasses.fields(BENCH_FLAGS.settings)][0] == "out_dir"

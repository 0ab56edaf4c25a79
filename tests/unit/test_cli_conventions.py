"""What a newcomer meets at the command line: readable --help, each command's own flags, a named broker.

Each rule is checked over every command, so a new one follows it or fails here.
"""

from __future__ import annotations

import argparse
import re
import socket

import pytest

from streamrec.cli import build_parser, main
from udfs import kafka_clients
from udfs.config import SECTIONS, env_var
from udfs.flags import CONFIG_FLAGS, JOB_FLAGS, RENAMED_SCOPES, command_env, env_value
from udfs.kafka_clients import KafkaClients, KafkaUnreachable


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._subparsers._group_actions)  # type: ignore[union-attr]
    return dict(action.choices)


def test_no_help_shows_an_internal_name() -> None:
    shown = {name: p.format_help() for name, p in commands().items()}
    assert len(shown) >= 20
    leaking = {name: text[text.find("CFG__") - 40:text.find("CFG__") + 40] for name, text in shown.items()
               if "CFG__" in text or "cfg__" in text}
    assert not leaking, leaking
    assert "--bootstrap-servers BOOTSTRAP_SERVERS" in shown["replay"]


def test_the_job_takes_no_flag_of_the_lookup_service() -> None:
    serve_only = [f for f, (section, _) in CONFIG_FLAGS.items() if section == "serve"]
    assert serve_only and not set(serve_only) & set(JOB_FLAGS)
    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args(["run", "--port", "8080"])
    assert refused.value.code == 2
    assert build_parser().parse_args(["serve", "--port", "8080"]).cfg__serve__port == "8080"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed when the block ends: nothing listens there


def test_an_unreachable_broker_is_named_with_what_to_check(monkeypatch) -> None:
    monkeypatch.setattr(kafka_clients, "BOOTSTRAP_TIMEOUT_MS", 500)
    address = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(KafkaUnreachable) as unreachable:
        KafkaClients(address).consumer()
    message = str(unreachable.value)
    assert address in message and "kafka.bootstrap_servers" in message and "streamrec kafka status" in message
    assert not message.startswith("KafkaUnreachable")


def test_a_command_against_an_unreachable_broker_exits_2_naming_it(monkeypatch, capsys) -> None:
    monkeypatch.setattr(kafka_clients, "BOOTSTRAP_TIMEOUT_MS", 500)
    address = f"127.0.0.1:{_closed_port()}"
    assert main(["consume", "--bootstrap-servers", address, "--timeout", "1"]) == 2
    err = capsys.readouterr().err
    assert f"streamrec consume: no Kafka broker answered at {address}" in err and "Traceback" not in err


def test_every_command_that_reads_a_log_reads_it_the_same_way_by_default() -> None:
    readers = {}
    for name, p in commands().items():
        action = next((a for a in p._actions if "--format" in a.option_strings), None)
        if action is not None and "auto" in (action.choices or ()):
            readers[name] = action.default
    assert {"replay", "train", "retrain", "evaluate"} <= set(readers)
    assert set(readers.values()) == {"auto"}, readers


GLOBAL_ENV = {"STREAMREC_CONFIG", "STREAMREC_NO_PROGRESS"}


def _env_of(action: argparse.Action) -> str | None:
    found = re.search(r"\[env: (STREAMREC_[A-Z0-9_]+)", action.help or "")
    return found.group(1) if found else None


def test_every_variable_follows_the_one_rule_and_none_is_two_settings() -> None:
    """STREAMREC_<SCOPE>_<NAME>: a config section and its key, or a command and its flag."""
    config_vars = {env_var(section, field) for section, model in SECTIONS.items() for field in model.model_fields}
    command_vars: dict[str, str] = {}
    off_rule = []
    for name, parser in commands().items():
        for action in parser._actions:
            env = _env_of(action)
            if env is None or env in GLOBAL_ENV or env in config_vars:
                continue
            flag = max(action.option_strings, key=len)
            if env != command_env(name, flag):
                off_rule.append((name, flag, env))
            command_vars[env] = f"{name} {flag}"
    assert len(command_vars) > 80
    assert off_rule == []
    assert not set(command_vars) & config_vars


def test_a_variable_under_a_renamed_scope_still_counts_with_a_warning() -> None:
    renamed = f"STREAMREC_{RENAMED_SCOPES['EVALUATE']}_SEEDS"
    with pytest.warns(FutureWarning, match="STREAMREC_EVALUATE_SEEDS"):
        assert env_value("STREAMREC_EVALUATE_SEEDS", {renamed: "4,5"}) == "4,5"
    assert env_value("STREAMREC_EVALUATE_SEEDS", {renamed: "4,5", "STREAMREC_EVALUATE_SEEDS": "6"}) == "6"
    assert env_value("STREAMREC_EVALUATE_SEEDS", {}) is None

"""Pseudonymous shoppers (udfs/privacy.py): the HMAC rule, the key's sources, redacted dead letters.

Expected pseudonyms are computed here from the rule (hex HMAC-SHA256 of the UTF-8 of the
canonical id), and one from RFC 4231, never copied from the code's output.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import pickle

import msgpack
import pytest

from streamrec.cli import main as cli_main
from udfs.config import ConfigError, PrivacyConfig, env_var, load_config
from udfs.events import DecodeError, Event, InvalidId, decode_event, encode_event
from udfs.privacy import MIN_KEY_BYTES, PseudonymKey, key_id, load_key, pseudonym, redact_reason
from udfs.records import dead_letter_record

KEY = b"0123456789abcdef0123456789abcdef-test-key"
RAW_ID = "shopper-raw-7f3a"


def _hmac_hex(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _key_file(tmp_path, content: bytes):
    path = tmp_path / "pseudonym.key"
    path.write_bytes(content)
    return path


def test_rfc4231_test_case_2():
    """Key "Jefe", data "what do ya want for nothing?" (a valid string id): RFC 4231, 4.3."""
    assert pseudonym("what do ya want for nothing?", b"Jefe") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")


@pytest.mark.parametrize(("user_id", "message"), [
    (42, b"42"),
    ("42", b"42"),                      # a canonical-int string is that int: one shopper
    ("042", b"042"),                    # not canonical: stays a string id
    (-(2**63), b"-9223372036854775808"),
    ("shopper-e\u0301", "shopper-\u00e9".encode()),  # NFC first
    (RAW_ID, RAW_ID.encode()),
])
def test_pseudonym_is_the_hmac_of_the_canonical_id(user_id, message):
    assert pseudonym(user_id, KEY) == _hmac_hex(KEY, message)


def test_an_id_the_job_rejects_has_no_pseudonym():
    with pytest.raises(InvalidId, match="out_of_range:user_id"):
        pseudonym(2**63, KEY)


def test_the_key_never_shows_in_repr_str_logs_or_pickles(caplog):
    key = PseudonymKey(KEY, "privacy.key_env ($K)")
    shown = [repr(key), str(key), f"{key}"]
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("key: %s %r", key, key)
    shown.append(caplog.text)
    for text in shown:
        assert KEY.decode() not in text and KEY.hex() not in text
    assert key.key_id == _hmac_hex(KEY, b"streamrec key id")[:12] == key_id(KEY)
    assert key.key_id in repr(key)
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(key)


def test_a_short_key_is_refused_naming_its_source_not_the_key():
    short = b"s3cr3t-but-short"
    with pytest.raises(ConfigError, match=r"privacy.key_env \(\$K\).*16 bytes, at least 32") as err:
        PseudonymKey(short, "privacy.key_env ($K)")
    assert short.decode() not in str(err.value)
    assert MIN_KEY_BYTES == 32


def test_key_file_and_key_env_give_the_same_key_trailing_whitespace_ignored(tmp_path):
    path = _key_file(tmp_path, KEY + b" \r\n")
    from_file = load_key(PrivacyConfig(key_file=str(path)))
    from_env = load_key(PrivacyConfig(key_env="PSEUDONYM_KEY"), environ={"PSEUDONYM_KEY": KEY.decode() + "\n"})
    assert from_file.pseudonym(RAW_ID) == from_env.pseudonym(RAW_ID) == _hmac_hex(KEY, RAW_ID.encode())
    assert from_file.source == f"privacy.key_file ({path})"
    assert from_env.source == "privacy.key_env ($PSEUDONYM_KEY)"


def test_missing_key_fails_naming_the_source(tmp_path):
    with pytest.raises(ConfigError, match=r"privacy.key_env \(\$NOPE\): environment variable 'NOPE' is not set"):
        load_key(PrivacyConfig(key_env="NOPE"), environ={})
    with pytest.raises(ConfigError, match=r"privacy.key_file \(.*gone\): cannot read"):
        load_key(PrivacyConfig(key_file=str(tmp_path / "gone")))
    with pytest.raises(ConfigError, match="privacy.key_file or privacy.key_env"):
        load_key(PrivacyConfig())


def test_pseudonymize_without_a_key_source_fails_at_config_time(tmp_path):
    on = env_var("privacy", "pseudonymize")
    with pytest.raises(ConfigError, match="privacy.pseudonymize needs privacy.key_file or privacy.key_env"):
        load_config(environ={on: "true"})
    with pytest.raises(ConfigError, match="privacy.key_file: file not found"):
        load_config(environ={on: "true", env_var("privacy", "key_file"): str(tmp_path / "gone")})
    with pytest.raises(ConfigError, match="privacy.key_env: environment variable 'PK' is not set"):
        load_config(environ={on: "true", env_var("privacy", "key_env"): "PK"})
    with pytest.raises(ConfigError, match="privacy.key_file and privacy.key_env are both set"):
        load_config(environ={env_var("privacy", "key_file"): "f", env_var("privacy", "key_env"): "PK"})
    cfg = load_config(environ={on: "true", env_var("privacy", "key_env"): "PK", "PK": KEY.decode()})
    assert cfg.privacy.pseudonymize and cfg.privacy.key_env == "PK"


def test_a_key_put_in_the_config_file_is_refused_without_echoing_it(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(f'[privacy]\nkey = "{KEY.decode()}"\n')
    with pytest.raises(ConfigError, match="privacy.key") as err:
        load_config(cfg_file, environ={})
    assert KEY.decode() not in str(err.value) and "value hidden" in str(err.value)


@pytest.mark.parametrize(("pseudonymize", "keep", "redact"),
                         [(False, False, False), (False, True, False), (True, False, True), (True, True, False)])
def test_dead_letters_are_redacted_only_when_pseudonymous_and_not_told_to_keep_raw(pseudonymize, keep, redact):
    privacy = PrivacyConfig.model_validate(
        {"pseudonymize": pseudonymize, "key_env": "PK", "keep_raw_dead_letters": keep},
        context={"environ": {"PK": KEY.decode()}})
    assert privacy.redact_dead_letters is redact


def test_decode_replaces_the_user_id_at_ingestion():
    key = PseudonymKey(KEY, "test")
    event = Event(RAW_ID, 5, 6, "pv", 1_700_000_000_000)
    decoded = decode_event(encode_event(event), pseudonym=key.pseudonym)
    assert decoded == event._replace(user_id=_hmac_hex(KEY, RAW_ID.encode()))
    as_string = decode_event(encode_event(event._replace(user_id="42")), pseudonym=key.pseudonym)
    as_int = decode_event(encode_event(event._replace(user_id=42)), pseudonym=key.pseudonym)
    assert isinstance(as_int, Event) and isinstance(as_string, Event)
    assert as_string.user_id == as_int.user_id == _hmac_hex(KEY, b"42")


def test_redacted_dead_letter_holds_no_raw_bytes_and_no_detail():
    raw = msgpack.packb({"user_id": 2**64 - 1, "item_id": 1, "category_id": 1, "behavior": "pv", "ts": 1})
    error = decode_event(raw)
    assert isinstance(error, DecodeError) and str(2**64 - 1) in error.reason
    key, value = dead_letter_record(error, "in", 0, 7, 123, redact=True)
    body = msgpack.unpackb(value, raw=False)
    assert key == "in:0:7"
    assert body == {"reason": "out_of_range:user_id", "topic": "in", "partition": 0, "offset": 7, "timestamp": 123,
                    "raw": b"", "raw_len": len(raw), "raw_truncated": False, "raw_redacted": True}
    kept = msgpack.unpackb(dead_letter_record(error, "in", 0, 7, 123)[1], raw=False)
    assert kept["raw"] == raw and kept["reason"] == error.reason and "raw_redacted" not in kept


@pytest.mark.parametrize(("reason", "code"), [
    ("out_of_range:user_id: 18446744073709551615 does not fit in int64", "out_of_range:user_id"),
    ("key_mismatch: envelope key 'abc' != user_id", "key_mismatch"),
    ("missing_field:user_id", "missing_field:user_id"),
    ("unknown_behavior: 'teleport'", "unknown_behavior"),
])
def test_redact_reason_keeps_the_code_and_field(reason, code):
    assert redact_reason(reason) == code


def test_cli_pseudonym_prints_one_per_id(tmp_path, capsys):
    path = _key_file(tmp_path, KEY + b"\n")
    assert cli_main(["pseudonym", "--key-file", str(path), RAW_ID, "42", "042"]) == 0
    assert capsys.readouterr().out.split() == [_hmac_hex(KEY, m) for m in (RAW_ID.encode(), b"42", b"042")]


def test_cli_pseudonym_without_a_key_source_says_where_to_put_it(capsys, monkeypatch):
    for name in (env_var("privacy", "key_file"), env_var("privacy", "key_env"), "STREAMREC_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    assert cli_main(["pseudonym", "42"]) == 2
    assert "privacy.key_file or privacy.key_env" in capsys.readouterr().err


def test_the_job_client_reads_the_key_before_it_starts_and_pins_its_path(tmp_path, monkeypatch):
    from jobs.entry import checked_privacy

    monkeypatch.chdir(tmp_path)
    _key_file(tmp_path, b"too-short\n")
    on = {env_var("privacy", "pseudonymize"): "true", env_var("privacy", "key_file"): "pseudonym.key"}
    with pytest.raises(ConfigError, match=r"privacy.key_file \(pseudonym.key\): the pseudonym key has 9 bytes"):
        checked_privacy(load_config(environ=on))
    _key_file(tmp_path, KEY)
    assert checked_privacy(load_config(environ=on)).privacy.key_file == str(tmp_path / "pseudonym.key")

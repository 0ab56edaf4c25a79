"""Config: defaults, the sample file, env vars and flags agree; bad values name their key."""

from pathlib import Path

import pytest

from streamrec.cli import build_parser
from udfs.config import SECTIONS, Config, ConfigError, env_var, load_config
from udfs.config_render import sample_toml
from udfs.flags import config_from_args

SAMPLE = Path(__file__).resolve().parents[2] / "config" / "streamrec.toml"


def test_sample_file_equals_defaults():
    assert load_config(SAMPLE, environ={}) == Config()


def test_sample_file_is_rendered_from_the_fields():
    """Regenerate with: python -c "from udfs.config_render import sample_toml; print(sample_toml(), end='')" """
    assert SAMPLE.read_text() == sample_toml()


def test_sample_file_lists_every_field_with_its_env_var():
    text = SAMPLE.read_text()
    for section, model in SECTIONS.items():
        assert f"[{section}]" in text
        for name in model.model_fields:
            assert f"\n{name} = " in text, name
            assert env_var(section, name) in text


def test_env_overrides_file_and_flags_override_env(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[kafka]\noutput_topic = "from-file"\n[ranking]\ntop_k = 7\n')
    env = {env_var("kafka", "output_topic"): "from-env"}
    cfg = load_config(cfg_file, environ=env)
    assert cfg.kafka.output_topic == "from-env"
    assert cfg.ranking.top_k == 7
    cfg = load_config(cfg_file, overrides={"kafka": {"output_topic": "from-flag"}}, environ=env)
    assert cfg.kafka.output_topic == "from-flag"


def test_env_value_is_validated_and_coerced():
    cfg = load_config(environ={env_var("job", "parallelism"): "2"})
    assert cfg.job.parallelism == 2


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"STREAMREC_JOB_PARALLELISM": "0"}, "job.parallelism"),
        ({"STREAMREC_JOB_EXECUTION_MODE": "fast"}, "job.execution_mode"),
        ({"STREAMREC_RANKING_PROVIDER": "tpu"}, "ranking.provider"),
        ({"STREAMREC_CATALOG_MAX_ITEMS": "0"}, "catalog.max_items"),
        ({"STREAMREC_CATALOG_MAX_TITLE_WORDS": "-1"}, "catalog.max_title_words"),
        ({"STREAMREC_CATALOG_MAX_INDEX_KEYS": "many"}, "catalog.max_index_keys"),
    ],
)
def test_bad_values_fail_naming_the_key(env, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(environ=env)


def test_unknown_key_in_file_is_rejected(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[kafka]\nbootstrap = 'x'\n")
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap"):
        load_config(f, environ={})


def test_cross_field_check():
    with pytest.raises(ConfigError, match="top_k"):
        load_config(overrides={"ranking": {"top_k": 50, "n_candidates": 10}}, environ={})


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.toml"):
        load_config(tmp_path / "nope.toml", environ={})


def test_every_cli_flag_shows_its_env_var():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert "[env: STREAMREC_" in (action.help or ""), f"{name} {action.option_strings}"


def test_cli_flags_become_config():
    args = build_parser().parse_args(["run", "--parallelism", "2", "--top-k", "5", "--provider", "cpu"])
    cfg = config_from_args(args)
    assert (cfg.job.parallelism, cfg.ranking.top_k, cfg.ranking.provider) == (2, 5, "cpu")


def test_a_json_input_mapping_reads_into_the_section():
    cfg = load_config(overrides={"input": {"format": "json", "user_field": "uid", "category_field": "",
                                           "ts_unit": "iso8601", "behaviors": "view=pv, add_to_cart=cart"}},
                      environ={})
    assert (cfg.input.user_field, cfg.input.category_field, cfg.input.ts_unit) == ("uid", "", "iso8601")
    assert cfg.input.behavior_map() == {"view": "pv", "add_to_cart": "cart"}


@pytest.mark.parametrize(("section", "key"), [
    ({"user_field": "uid"}, "input.user_field"),  # a mapping for msgpack input would be silently ignored
    ({"ts_unit": "s"}, "input.ts_unit"),
    ({"format": "json", "behaviors": "view=look"}, "input.behaviors"),
    ({"format": "json", "behaviors": "view"}, "input.behaviors"),
    ({"format": "json", "item_field": "uid", "user_field": "uid"}, "input"),
    ({"format": "json", "ts_field": "erase"}, "input"),
    ({"format": "json", "user_field": ""}, "input.user_field"),
    ({"format": "avro"}, "input.format"),
])
def test_a_bad_input_mapping_fails_at_start_naming_the_key(section, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides={"input": section}, environ={})

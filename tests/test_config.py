from dataclasses import dataclass, field

import pytest

from fissure.config import apply_overrides, dump_toml, from_dict, load_toml, parse_override, to_dict
from fissure.errors import ConfigError
from fissure.train.pipeline import DataConfig, RunConfig, load_run_config


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 10


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)


def test_unknown_key_is_named_with_suggestion():
    with pytest.raises(ConfigError, match=r"inner\.lrr.*did you mean 'lr'"):
        from_dict(Outer, {"inner": {"lrr": 1}})


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="inner.steps"):
        from_dict(Outer, {"inner": {"steps": "ten"}})


def test_int_promotes_to_float():
    assert from_dict(Outer, {"inner": {"lr": 1}}).inner.lr == 1.0


def test_overrides_parse_as_toml():
    assert parse_override("train.lr=3e-4") == (["train", "lr"], 3e-4)
    assert parse_override("train.compile=true") == (["train", "compile"], True)
    assert parse_override("data.builtin=stdlib") == (["data", "builtin"], "stdlib")
    raw = apply_overrides({"inner": {"lr": 0.1}}, ["inner.steps=5", "name=y"])
    cfg = from_dict(Outer, raw)
    assert (cfg.name, cfg.inner.steps, cfg.inner.lr) == ("y", 5, 0.1)


def test_run_config_round_trips_through_toml(tmp_path):
    cfg = load_run_config({"data": {"builtin": "stdlib"}, "train": {"lr": 3e-4, "max_steps": 7}})
    p = tmp_path / "c.toml"
    p.write_text(dump_toml(to_dict(cfg)))
    again = load_run_config(load_toml(p))
    assert again == cfg


def test_run_config_validation_errors(tmp_path):
    with pytest.raises(ConfigError, match="data.paths"):
        load_run_config({})
    with pytest.raises(ConfigError, match="dtype"):
        load_run_config({"data": {"builtin": "stdlib"}, "train": {"dtype": "fp8"}})
    with pytest.raises(ConfigError, match="tokenizer.kind"):
        load_run_config({"data": {"builtin": "stdlib"}, "tokenizer": {"kind": "wordpiece"}})
    with pytest.raises(ConfigError, match="data.normalize"):
        load_run_config({"data": {"builtin": "stdlib", "normalize": "NFD"}})
    bad = tmp_path / "bad.toml"
    bad.write_text("a = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(bad)
    # the defaults are a complete run config once data is named
    assert load_run_config({"data": {"builtin": "stdlib"}}) == RunConfig(data=DataConfig(builtin="stdlib"))


def test_any_text_round_trips_through_a_runs_config_toml():
    import tomllib

    for text in ["a\u0007b", 'quote " and \\ backslash', "line\nbreak\ttab\r\x00\x7f", "ünïcode ✓ 日本"]:
        data = {"study": {"description": text, "key with space.and dot": [1, 2.5, "x\x1b"]}, "seed": 3}
        assert tomllib.loads(dump_toml(data)) == data, repr(text)
    with pytest.raises(ConfigError, match="lone surrogate"):
        dump_toml({"description": "bad \ud800"})

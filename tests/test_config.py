"""The config system: dataclass configs from defaults, a YAML file and ``key=value`` overrides
(in that order of precedence), coercion to the annotated types, clear errors, and the resolved
config + package version written next to a run's outputs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml

import visalign
from visalign.config import (ConfigError, config_to_dict, describe_config, field, load_config,
                             parse_overrides, save_run_config)


@dataclasses.dataclass
class Lora:
    r: int = field(8, help="rank")
    alpha: float = field(16.0, help="scale")
    targets: list[str] = field(["q_proj", "v_proj"], help="modules")


@dataclasses.dataclass
class Stage:
    epochs: float = field(1.0)
    lr: float = field(1e-3)
    batch_size: int = field(32)


@dataclasses.dataclass
class Cfg:
    name: str = field("run", help="run name")
    lr: float = field(1e-4, help="learning rate")
    steps: int = field(10)
    bf16: bool = field(False)
    mode: Literal["token", "sentence"] = field("token")
    limit: Optional[int] = field(None)
    note: str | None = field(None)
    betas: tuple[float, float] = field((0.9, 0.999))
    seeds: list[int] = field([0])
    out: Path = field(Path("out"))
    lora: Lora = field(default_factory=Lora)
    # A nested default that is not the nested class's own default.
    warmup: Stage = field(default_factory=lambda: Stage(2.0, 5e-3, 64))


def test_defaults_and_mutable_defaults_are_not_shared():
    a, b = load_config(Cfg), load_config(Cfg)
    assert a == Cfg()
    a.seeds.append(1)
    a.lora.targets.append("o_proj")
    assert b.seeds == [0] and b.lora.targets == ["q_proj", "v_proj"]
    assert Cfg().seeds == [0]


def test_overrides_are_coerced_to_the_annotated_types():
    cfg = load_config(Cfg, overrides=[
        "name=123", "lr=3e-4", "steps=5.0", "bf16=yes", "mode=sentence", "limit=7",
        "note=hello", "betas=0.8,0.95", "seeds=[1, 2, 3]", "out=/tmp/x",
        "lora.r=4", "lora.alpha=32", "lora.targets=q_proj,k_proj,v_proj", "--warmup.epochs=0.5"])
    assert cfg.name == "123" and isinstance(cfg.name, str)
    assert cfg.lr == pytest.approx(3e-4) and isinstance(cfg.lr, float)  # "3e-4" is a YAML str
    assert cfg.steps == 5 and isinstance(cfg.steps, int)
    assert cfg.bf16 is True
    assert cfg.mode == "sentence"
    assert cfg.limit == 7 and cfg.note == "hello"
    assert cfg.betas == (0.8, 0.95) and isinstance(cfg.betas, tuple)
    assert cfg.seeds == [1, 2, 3]
    assert cfg.out == Path("/tmp/x")
    assert cfg.lora == Lora(r=4, alpha=32.0, targets=["q_proj", "k_proj", "v_proj"])
    assert isinstance(cfg.lora.alpha, float)
    # Overriding one nested key keeps the other nested defaults of the *outer* field.
    assert cfg.warmup == Stage(0.5, 5e-3, 64)


@pytest.mark.parametrize("raw,expected", [
    ("true", True), ("False", False), ("1", True), ("0", False), ("on", True), ("off", False)])
def test_bool_spellings(raw, expected):
    assert load_config(Cfg, overrides=[f"bf16={raw}"]).bf16 is expected


def test_string_fields_keep_the_text_as_typed():
    # YAML would read these as numbers/booleans; a str field gets exactly what was typed.
    cfg = load_config(Cfg, overrides=["name=0123", "note=no", "lora.targets=07"])
    assert cfg.name == "0123"
    assert cfg.note == "no"
    assert cfg.lora.targets == ["07"]
    # ...while the same text still becomes a number or a boolean where the type says so.
    @dataclasses.dataclass
    class Free:
        meta: dict = field({})
        anything: object = field(None)

    free = load_config(Free, overrides=["meta.a=1", "meta.b.c=true", "anything=2.5"])
    assert free.meta == {"a": 1, "b": {"c": True}} and free.anything == 2.5
    cfg = load_config(Cfg, overrides=["steps=0123", "bf16=no", "limit=010"])
    assert (cfg.steps, cfg.bf16, cfg.limit) == (123, False, 10)  # decimal, not YAML octal
    assert load_config(Cfg, overrides=["name=1.10"]).name == "1.10"


def test_optional_fields_accept_null_spellings():
    base = load_config(Cfg, overrides=["limit=5", "note=x"])
    for spelling in ("null", "~", "None", "none"):
        cfg = load_config(Cfg, overrides=[f"limit={spelling}"], base=base)
        assert cfg.limit is None, spelling
    # An Optional[str] keeps "None" as text unless it is YAML null.
    assert load_config(Cfg, overrides=["note=None"], base=base).note == "None"
    assert load_config(Cfg, overrides=["note=null"], base=base).note is None


@pytest.mark.parametrize("override,match", [
    ("steps=ten", "steps.*integer"),
    ("steps=true", "steps.*integer"),
    ("lr=fast", "lr.*number"),
    ("bf16=maybe", "bf16.*true/false"),
    ("mode=word", r"mode.*not one of \['token', 'sentence'\]"),
    ("limit=lots", "limit"),
    ("lora=3", "lora.*mapping"),
    ("seeds=a,b", r"seeds\[0\].*integer"),
    ("lora.r=x", r"lora\.r.*integer"),
])
def test_bad_values_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(Cfg, overrides=[override])


def test_unknown_keys_list_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, overrides=["lerning_rate=1"])
    msg = str(e.value)
    assert "lerning_rate" in msg
    for f in dataclasses.fields(Cfg):
        assert f.name in msg
    with pytest.raises(ConfigError, match=r"lora\.rank.*valid keys for Lora: alpha, r, targets"):
        load_config(Cfg, overrides=["lora.rank=4"])
    p = tmp_path / "c.yaml"
    p.write_text("lora:\n  r: 4\n  dropout: 0.1\n")
    with pytest.raises(ConfigError, match=r"lora\.dropout"):
        load_config(Cfg, p)


def test_malformed_overrides():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lr"])
    with pytest.raises(ConfigError, match="empty key"):
        parse_overrides(["=3"])
    with pytest.raises(ConfigError, match="conflicts"):
        parse_overrides(["lora=3", "lora.r=4"])
    assert parse_overrides(["a.b=1", "a.c=x", "--d-e=[1, 2]", "f="]) == {
        "a": {"b": 1, "c": "x"}, "d_e": [1, 2], "f": ""}


def test_yaml_then_overrides_precedence(tmp_path):
    p = tmp_path / "recipe.yaml"
    p.write_text("lr: 0.5\nsteps: 20\nlora:\n  r: 16\nwarmup:\n  lr: 0.1\n")
    cfg = load_config(Cfg, p, ["steps=30", "lora.alpha=2"])
    assert cfg.lr == 0.5                       # YAML over default
    assert cfg.steps == 30                     # override over YAML
    assert cfg.lora.r == 16 and cfg.lora.alpha == 2.0  # nested keys merge, not replace
    assert cfg.lora.targets == ["q_proj", "v_proj"]
    assert cfg.warmup == Stage(2.0, 0.1, 64)   # field default, not Stage()'s default
    assert cfg.name == "run"
    # ``base`` replaces the defaults; YAML and overrides still win over it.
    base = Cfg(name="base", lr=9.0, steps=1)
    cfg = load_config(Cfg, p, {"steps": 2}, base=base)
    assert (cfg.name, cfg.lr, cfg.steps, cfg.lora.r) == ("base", 0.5, 2, 16)


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Cfg, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(Cfg, bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(Cfg, top)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(Cfg, empty) == Cfg()


def test_dataclass_instance_as_field_default():
    @dataclasses.dataclass
    class Outer:
        stage: Stage = field(Stage(3.0, 0.5, 4), help="a nested default instance")

    a, b = Outer(), load_config(Outer, overrides=["stage.lr=0.25"])
    assert a.stage == Stage(3.0, 0.5, 4) and b.stage == Stage(3.0, 0.25, 4)
    a.stage.epochs = 9.0
    assert Outer().stage.epochs == 3.0  # not shared between instances


def test_missing_required_field_is_a_config_error():
    @dataclasses.dataclass
    class Needs:
        world: str = field(help="world dir")
        seed: int = field(0)

    with pytest.raises(ConfigError, match="world"):
        load_config(Needs, overrides=["seed=1"])
    assert load_config(Needs, overrides=["world=w"]).world == "w"


def test_save_run_config_round_trips_with_version(tmp_path):
    cfg = load_config(Cfg, overrides=["name=0123", "lr=2e-5", "limit=3", "betas=0.5,0.6",
                                      "out=/data/o", "lora.targets=a,b", "warmup.epochs=4"])
    path = save_run_config(cfg, tmp_path / "run")
    assert path == tmp_path / "run" / "config.yaml"
    data = yaml.safe_load(path.read_text())
    assert data["visalign_version"] == visalign.__version__
    assert list(data)[0] == "visalign_version"
    assert {k: v for k, v in data.items() if k != "visalign_version"} == config_to_dict(cfg)
    assert data["out"] == "/data/o" and data["betas"] == [0.5, 0.6]
    # The written file is a valid recipe: loading it gives the same config back.
    assert load_config(Cfg, path) == cfg
    assert not [p for p in path.parent.iterdir() if p.name != "config.yaml"]  # no temp left
    other = save_run_config(Cfg(), tmp_path / "run", name="other.yaml")
    assert load_config(Cfg, other) == Cfg()


def test_describe_config_lists_fields_with_help():
    text = describe_config(Cfg)
    assert "lr = 0.0001  -- learning rate" in text
    assert [line for line in text.splitlines() if line.strip().startswith("lora = ") and
            "{...}" in line]
    assert len(text.splitlines()) == len(dataclasses.fields(Cfg))


def test_project_configs_round_trip(tmp_path):
    """The package's own configs survive save_run_config -> load_config unchanged."""
    from visalign.models.generation import GenerationConfig
    from visalign.methods.base_model import base_config

    for cfg in (GenerationConfig(limit=3, do_sample=True, image_root="imgs"),
                base_config("tiny", ["lm_pretrain.epochs=0.25"])):
        path = save_run_config(cfg, tmp_path, name=f"{type(cfg).__name__}.yaml")
        assert load_config(type(cfg), path) == cfg
    tiny = base_config("tiny", ["lm_pretrain.epochs=0.25"])
    assert tiny.lm_pretrain.epochs == 0.25 and tiny.lm_pretrain.lr == 2e-3

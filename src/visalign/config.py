"""Dataclass configs: YAML files plus ``key=value`` command-line overrides.

Every config is a (possibly nested) dataclass. ``load_config(Cls, "recipe.yaml", ["lr=1e-4",
"lora.r=8"])`` builds one; unknown keys are errors that list the valid ones, values are coerced to
the annotated field type. ``save_run_config`` writes the resolved config and the package version
next to a run's outputs so every result can be traced to the exact settings that produced it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml

from visalign import __version__
from visalign.io import atomic_write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the config dataclass."""


def field(default: Any = dataclasses.MISSING, *, help: str = "", **kw) -> Any:
    """``dataclasses.field`` with a ``help`` string (shown by ``describe_config``)."""
    if default is not dataclasses.MISSING and isinstance(default, (list, dict, set)):
        value = default
        kw["default_factory"] = lambda: type(value)(value)
    elif default is not dataclasses.MISSING:
        kw["default"] = default
    return dataclasses.field(metadata={"help": help}, **kw)


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """Parse ``["a.b=1", "name=x"]`` into a nested dict; values are read as YAML scalars."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-").replace("-", "_")
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override")
        node[parts[-1]] = value
    return out


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} fits none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return _from_dict(tp, value, where + ".")
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no",
                                                        "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        if value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if tp is Path:
        return Path(value)
    return value


def _from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + u for u in unknown)}; "
                          f"valid keys for {cls.__name__}: {', '.join(sorted(fields))}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def config_to_dict(cfg: Any) -> dict:
    """A plain-YAML-able dict of a config dataclass (Paths become strings)."""
    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v
    return conv(cfg)


def load_config(cls: type[T], path: str | Path | None = None,
                overrides: Iterable[str] | dict = (), base: T | None = None) -> T:
    """Build ``cls`` from defaults (or ``base``), then a YAML file, then overrides."""
    data: dict = config_to_dict(base) if base is not None else {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        loaded.pop("visalign_version", None)
        data = _deep_merge(data, loaded)
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    data = _deep_merge(data, extra)
    return _from_dict(cls, data)


def save_run_config(cfg: Any, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config plus ``visalign_version`` to ``out_dir/name`` (atomically)."""
    d = {"visalign_version": __version__, **config_to_dict(cfg)}
    return atomic_write_text(Path(out_dir) / name, yaml.safe_dump(d, sort_keys=False))


def describe_config(cls: type) -> str:
    """One line per field: ``name (type) = default  -- help``; used by ``--help-config``."""
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "<required>")
        if dataclasses.is_dataclass(default):
            default = "{...}"
        lines.append(f"  {f.name} = {default!r}  -- {f.metadata.get('help', '')}")
    return "\n".join(lines)

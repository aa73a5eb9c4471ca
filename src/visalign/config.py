"""Dataclass configs: YAML files plus ``key=value`` command-line overrides.

Every config is a (possibly nested) dataclass. ``load_config(Cls, "recipe.yaml", ["lr=1e-4",
"lora.r=8"])`` builds one; unknown keys are errors that list the valid ones, values are coerced to
the annotated field type. ``save_run_config`` writes the resolved config and the package version
next to a run's outputs so every result can be traced to the exact settings that produced it.
"""

from __future__ import annotations

import copy
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
    if default is not dataclasses.MISSING and (isinstance(default, (list, dict, set))
                                              or dataclasses.is_dataclass(default)):
        value = default
        kw["default_factory"] = lambda: copy.deepcopy(value)
    elif default is not dataclasses.MISSING:
        kw["default"] = default
    return dataclasses.field(metadata={"help": help}, **kw)


class _Typed:
    """An override value YAML read as a non-string scalar, with the text as typed: a ``str``
    field gets ``raw`` (``name=0123`` stays "0123", ``note=no`` stays "no"), others ``value``."""

    __slots__ = ("raw", "value")

    def __init__(self, raw: str, value: Any):
        self.raw, self.value = raw, value

    def __repr__(self) -> str:
        return repr(self.value)


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """Parse ``["a.b=1", "name=x"]`` into a nested dict; values are read as YAML scalars."""
    return _parse_overrides(overrides, keep_raw=False)


def _parse_overrides(overrides: Iterable[str], keep_raw: bool) -> dict[str, Any]:
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
        if keep_raw and not isinstance(value, (str, list, dict)):
            value = _Typed(raw.strip(), value)
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


def _plain(value: Any) -> Any:
    """``value`` with every override wrapper replaced by its YAML value (for untyped fields)."""
    if isinstance(value, _Typed):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(value, _Typed):
        if tp is str or tp is Path:
            return tp(value.raw)
        if tp is int and value.raw.isdigit():
            return int(value.raw)  # decimal, not YAML 1.1 octal (``steps=010`` is 10)
        if origin is typing.Literal and value.raw in args and value.value not in args:
            return value.raw
        if origin not in (typing.Union, types.UnionType, list, tuple) and tp not in (list, tuple):
            value = value.value  # Union and list arms decide for themselves
    if tp is Any or tp is typing.Any:
        return _plain(value)
    if origin in (typing.Union, types.UnionType):
        plain = value.value if isinstance(value, _Typed) else value
        if plain is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError:
                pass
        if type(None) in args and isinstance(plain, str) and plain.lower() in ("none", "null"):
            return None  # ``limit=None`` on an Optional[int]
        raise ConfigError(f"{where}: {plain!r} fits none of {tp}")
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
        return _plain(value)
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
    return _plain(value)


def _from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + u for u in unknown)}; "
                          f"valid keys for {cls.__name__}: {', '.join(sorted(fields))}")
    missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing required config key(s) {', '.join(prefix + m for m in missing)}"
                          f" for {cls.__name__}")
    kwargs = {}
    for k, v in data.items():
        tp, f = hints[k], fields[k]
        if isinstance(v, dict) and dataclasses.is_dataclass(tp):
            # Partial nested keys start from the field's own default (which may differ from the
            # nested class's defaults), not from the nested class's defaults.
            default = (f.default_factory() if f.default_factory is not dataclasses.MISSING
                       else f.default)
            if isinstance(default, tp):
                v = _deep_merge(config_to_dict(default), v)
        kwargs[k] = _coerce(v, tp, prefix + k)
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
    extra = overrides if isinstance(overrides, dict) else _parse_overrides(overrides, True)
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

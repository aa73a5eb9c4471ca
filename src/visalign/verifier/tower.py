"""Is the verifier the policy's own vision tower? FiSAO's premise, checked before any work.

FiSAO scores each object token "with the pre-trained vision encoder" of the model being trained
(seed 004, Sec. 3.3): for LLaVA-1.5 the CLIP whose vision model is LLaVA's vision tower
(openai/clip-vit-large-patch14-336 for llava-hf/llava-1.5-7b-hf). A verifier from another CLIP
scores fine and rewards the wrong thing, so :func:`check_vision_tower` compares the two:

- **configs**: the CLIP vision config of the verifier against the policy's ``vision_config``
  (hidden size, layers, heads, patch size, image size, ...), read with ``AutoConfig`` so that an
  old-style CLIP config (``vision_config_dict`` over ``vision_config``) reads as transformers
  reads it;
- **weights**: every tensor of the verifier's ``vision_model.*`` against the policy's
  ``vision_tower.*`` (llava-hf's hub names ``vision_tower.vision_model.*`` and what
  transformers 5 saves, ``vision_tower.*``, alike): the names and shapes from the safetensors
  headers, the values of the first rows of each tensor (all of them with ``full=True``), read
  lazily from the shard that holds it, so a 7B checkpoint's language model is never read. Values
  match when equal up to the rounding of the coarser dtype (an fp32 CLIP against an fp16 tower).

A mismatch raises :class:`VerifierMismatch` (one line) unless the caller passes
``allow_mismatch=True``, which warns instead.

:func:`resolve_verifier` finds the verifier (``--verifier``, else ``MODEL/verifier``) without
ever downloading, and :func:`check_fisao_inputs` names every missing FiSAO input in one line.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visalign.io import DataError

# The CLIP vision config fields that decide what the tower computes.
VISION_FIELDS = ("image_size", "patch_size", "hidden_size", "num_hidden_layers",
                 "num_attention_heads", "intermediate_size", "num_channels", "hidden_act",
                 "layer_norm_eps")
# What a CLIP-style checkpoint (CLIPModel, CLIPVisionModel) calls its vision weights.
VISION_PREFIX = "vision_model."
TOWER_MARK = "vision_tower."
DEFAULT_SAMPLE = 16384          # values compared per tensor unless full=True
LLAVA15_VERIFIER = "openai/clip-vit-large-patch14-336"


class VerifierMismatch(ValueError):
    """The verifier is not the policy's vision tower (one-line message)."""


@dataclass
class TowerComparison:
    """What differs between a verifier and a policy's vision tower (empty lists: the same)."""

    verifier: str
    policy: str
    config_diffs: list[str] = field(default_factory=list)
    weight_diffs: list[str] = field(default_factory=list)
    n_tensors: int = 0          # tensors whose values were compared
    n_values: int = 0           # values compared
    full: bool = False

    @property
    def ok(self) -> bool:
        return not (self.config_diffs or self.weight_diffs)

    @property
    def diffs(self) -> list[str]:
        return self.config_diffs + self.weight_diffs

    def summary(self, limit: int = 3) -> str:
        """One line: the first ``limit`` differences and how many more."""
        if self.ok:
            how = "all" if self.full else "a sample of"
            return (f"verifier {self.verifier} is the vision tower of {self.policy} (configs "
                    f"equal; {how} {self.n_values} values of {self.n_tensors} tensors equal)")
        d = self.diffs
        more = f"; and {len(d) - limit} more" if len(d) > limit else ""
        return (f"verifier {self.verifier} is not the vision tower of {self.policy}: "
                f"{'; '.join(d[:limit])}{more}")


# -- locating dirs ----------------------------------------------------------------------------
def _looks_like_hub_id(name: str) -> bool:
    return (name.count("/") == 1 and not name.startswith(("/", ".", "~"))
            and not Path(name).exists())


def local_model_dir(name_or_path: str | os.PathLike, what: str = "model",
                    option: str = "--model") -> Path:
    """A local model dir: the path itself, or a hub id's snapshot in the Hugging Face cache.
    Never downloads; anything else is a one-line :class:`~visalign.io.DataError`."""
    name = str(name_or_path)
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise DataError(p, f"{what} dir has no config.json ({option} needs a model saved "
                               "with save_pretrained)")
        return p
    if _looks_like_hub_id(name):
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(name, "config.json")
        except ValueError:   # an id the hub library rejects is simply not cached
            hit = None
        if isinstance(hit, str):
            return Path(hit).parent
        raise DataError(name, f"{what} is neither a local dir nor in the Hugging Face cache "
                              f"(nothing is downloaded here: `huggingface-cli download {name} "
                              f"--local-dir DIR`, then {option} DIR)")
    raise DataError(p, f"{what} dir not found ({option})")


def resolve_verifier(model: str | os.PathLike | None, verifier: str | os.PathLike | None = None
                     ) -> Path:
    """The verifier dir: ``verifier`` when given, else ``MODEL/verifier`` when that exists.

    Raises a one-line error naming ``--verifier`` otherwise (a hub model has no ``verifier/``
    folder; for llava-1.5 the verifier is ``openai/clip-vit-large-patch14-336``).
    """
    if verifier:
        return local_model_dir(verifier, "verifier", "--verifier")
    if model:
        p = Path(str(model)).expanduser()
        if (p / "verifier" / "config.json").is_file():
            return p / "verifier"
        where = (f"{p}/verifier does not exist" if p.is_dir()
                 else f"{model} is not a local dir, so it has no verifier/ folder")
    else:
        where = "no model given"
    raise ValueError(f"no verifier: {where}; pass --verifier DIR, the CLIP model whose vision "
                     f"model is the policy's vision tower (for llava-1.5: {LLAVA15_VERIFIER})")


def check_fisao_inputs(model: str | None, verifier: str | None, calibration: str | None,
                       data: str | None = None) -> Path:
    """Check FiSAO's required inputs before any work; returns the resolved verifier dir.

    Every missing input is named in ONE error line: ``--model`` (the policy), ``--verifier``
    (given, or ``MODEL/verifier``), ``--calibration`` (from ``visalign fisao calibrate``) and,
    when ``data`` is not None, ``--data`` (the prompt records).
    """
    problems: list[str] = []
    if not model:
        problems.append("--model (the policy model dir) is not set")
    else:
        p = Path(str(model)).expanduser()
        if not p.exists() and not _looks_like_hub_id(str(model)):
            problems.append(f"--model {model} does not exist")
    resolved: Path | None = None
    try:
        resolved = resolve_verifier(model, verifier)
    except (ValueError, DataError) as e:
        problems.append(f"--verifier: {e}")
    if not calibration:
        problems.append("--calibration is not set (run `visalign fisao calibrate` first)")
    elif not Path(str(calibration)).is_file():
        problems.append(f"--calibration {calibration} does not exist")
    if data is not None:
        if not data:
            problems.append("--data (the prompt records) is not set")
        elif not Path(str(data)).is_file():
            problems.append(f"--data {data} does not exist")
    if problems:
        raise ValueError("FiSAO cannot start: " + "; ".join(problems))
    assert resolved is not None
    return resolved


# -- configs ----------------------------------------------------------------------------------
def _vision_config(path: Path, role: str) -> Any:
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise DataError(path / "config.json", f"cannot read the {role} config: "
                                              f"{type(e).__name__}: {e}") from None
    vc = cfg if cfg.model_type == "clip_vision_model" else getattr(cfg, "vision_config", None)
    if vc is None:
        raise DataError(path / "config.json", f"the {role} ({cfg.model_type}) has no vision "
                                              "config", field="vision_config")
    return vc


CLIP_TYPES = ("clip", "clip_vision_model")


def _model_type(path: Path) -> str | None:
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def compare_configs(verifier: Path, policy: Path) -> list[str]:
    """The vision-config fields that differ (``"patch_size: verifier 14, policy 16"``)."""
    kind = _model_type(verifier)
    if kind not in CLIP_TYPES:
        return [f"the verifier is a {kind} model, not a CLIP (model_type clip)"]
    v, p = _vision_config(verifier, "verifier"), _vision_config(policy, "policy")
    if v.model_type != p.model_type:
        return [f"vision model type: verifier {v.model_type}, policy {p.model_type}"]
    return [f"{f}: verifier {getattr(v, f, None)!r}, policy {getattr(p, f, None)!r}"
            for f in VISION_FIELDS if getattr(v, f, None) != getattr(p, f, None)]


# -- weights ----------------------------------------------------------------------------------
class _Tensors:
    """The tensors of a checkpoint dir, by name, read lazily from its safetensors files."""

    def __init__(self, path: Path, role: str):
        self.path, self.role = path, role
        index = path / "model.safetensors.index.json"
        self.files: dict[str, Path] = {}
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(index, f"not a safetensors index ({type(e).__name__})",
                                field="weight_map") from None
            self.files = {k: path / f for k, f in weight_map.items()}
        else:
            from safetensors import safe_open

            for f in sorted(path.glob("*.safetensors")):
                with safe_open(str(f), framework="pt") as sf:
                    self.files.update((k, f) for k in sf.keys())  # noqa: SIM118 (not a dict)
        self._state: dict[str, Any] | None = None
        if not self.files:
            self._state = self._fallback_state()
        self._open: dict[Path, Any] = {}

    def _fallback_state(self) -> dict[str, Any]:
        """A CLIP dir without safetensors (a ``pytorch_model.bin``): its vision model only,
        loaded by transformers (small next to any policy)."""
        if self.role != "verifier":
            raise DataError(self.path, f"no safetensors weights in the {self.role} dir (the "
                                       "tower is compared from safetensors files)")
        from transformers import CLIPVisionModel

        model = CLIPVisionModel.from_pretrained(str(self.path), local_files_only=True)
        return {k: v.detach() for k, v in model.state_dict().items()}

    def names(self) -> list[str]:
        return list(self._state) if self._state is not None else list(self.files)

    def _handle(self, name: str):
        from safetensors import safe_open

        f = self.files[name]
        if f not in self._open:
            if not f.is_file():
                raise DataError(f, f"shard listed in the {self.role}'s index is missing")
            self._open[f] = safe_open(str(f), framework="pt")
        return self._open[f]

    def shape(self, name: str) -> tuple[int, ...]:
        if self._state is not None:
            return tuple(self._state[name].shape)
        return tuple(self._handle(name).get_slice(name).get_shape())

    def rows(self, name: str, n_values: int | None):
        """The tensor's first rows holding about ``n_values`` values (all with None)."""
        if self._state is not None:
            t = self._state[name]
            return t if n_values is None or t.dim() == 0 else t[:_n_rows(t.shape, n_values)]
        sl = self._handle(name).get_slice(name)
        shape = sl.get_shape()
        if n_values is None or not shape:
            return sl[:] if shape else self._handle(name).get_tensor(name)
        return sl[:_n_rows(shape, n_values)]


def _n_rows(shape, n_values: int) -> int:
    per_row = 1
    for d in list(shape)[1:]:
        per_row *= int(d)
    return max(1, n_values // max(per_row, 1))


def _tolerance(a, b) -> tuple[float, float]:
    """(rtol, atol) of the coarser of the two dtypes: a tensor rounded to it still matches."""
    import torch

    coarse = {torch.bfloat16: (2.0 ** -7, 1e-7), torch.float16: (2.0 ** -10, 1e-7)}
    for dt in (torch.bfloat16, torch.float16):
        if dt in (a.dtype, b.dtype):
            return coarse[dt]
    return (1e-6, 1e-9)


def _vision_names(t: _Tensors, bare: bool = False) -> dict[str, str]:
    """``{name inside the vision model: stored name}`` of a checkpoint's CLIP vision weights.

    The policy's tower is whatever follows ``vision_tower.`` (llava-hf's hub files:
    ``vision_tower.vision_model.X``; transformers 5 saves ``vision_tower.X``); the verifier's is
    what follows ``vision_model.`` (``CLIPModel``), or, with ``bare``, every tensor of a bare
    vision model.
    """
    out = {}
    for k in t.names():
        if t.role == "policy":
            if TOWER_MARK not in k:
                continue
            rest = k.split(TOWER_MARK, 1)[1]
        elif k.startswith(VISION_PREFIX):
            rest = k
        else:
            continue
        out[rest.removeprefix(VISION_PREFIX)] = k
    if not out and bare:
        out = {k: k for k in t.names()}
    # old checkpoints persist the position_ids buffer (an arange, not a weight); newer do not
    return {n: k for n, k in out.items() if not n.endswith("position_ids")}


def _list(names: list[str], n: int = 2) -> str:
    return ", ".join(names[:n]) + (f" (+{len(names) - n})" if len(names) > n else "")


def compare_weights(verifier: Path, policy: Path, *, full: bool = False,
                    sample: int = DEFAULT_SAMPLE) -> tuple[list[str], int, int]:
    """(differences, tensors compared, values compared) between the verifier's vision weights
    and the policy's vision tower (see the module docstring)."""
    import torch

    vt, pt = _Tensors(verifier, "verifier"), _Tensors(policy, "policy")
    vn = _vision_names(vt, bare=_model_type(verifier) == "clip_vision_model")
    pn = _vision_names(pt)
    if not vn:
        return [f"no {VISION_PREFIX}* weights in the verifier"], 0, 0
    if not pn:
        return [f"no {TOWER_MARK}* weights in the policy"], 0, 0
    diffs = []
    only_v = sorted(set(vn) - set(pn))
    only_p = sorted(set(pn) - set(vn))
    if only_v:
        diffs.append(f"{len(only_v)} verifier tensors missing from the tower: {_list(only_v)}")
    if only_p:
        diffs.append(f"{len(only_p)} tower tensors missing from the verifier: {_list(only_p)}")
    n_tensors = n_values = 0
    for name in sorted(set(vn) & set(pn)):
        vs, ps = vt.shape(vn[name]), pt.shape(pn[name])
        if vs != ps:
            diffs.append(f"{name}: shape {list(vs)} in the verifier, {list(ps)} in the tower")
            continue
        a = vt.rows(vn[name], None if full else sample)
        b = pt.rows(pn[name], None if full else sample)
        rtol, atol = _tolerance(a, b)
        a32, b32 = a.float(), b.float()
        bad = (a32 - b32).abs() > atol + rtol * torch.maximum(a32.abs(), b32.abs())
        n_tensors += 1
        n_values += a32.numel()
        if bool(bad.any()):
            diffs.append(f"{name}: {int(bad.sum())} of {a32.numel()} compared values differ "
                         f"(max |diff| {float((a32 - b32).abs().max()):.3g})")
    return diffs, n_tensors, n_values


def compare_vision_tower(verifier: str | os.PathLike, policy: str | os.PathLike, *,
                         full: bool = False, sample: int = DEFAULT_SAMPLE) -> TowerComparison:
    """Compare a CLIP verifier with a policy's vision tower: configs, then weights."""
    v = local_model_dir(verifier, "verifier", "--verifier")
    p = local_model_dir(policy, "policy model", "--model")
    res = TowerComparison(str(verifier), str(policy), full=full)
    res.config_diffs = compare_configs(v, p)
    if res.config_diffs:     # different shapes: the weights cannot match
        return res
    res.weight_diffs, res.n_tensors, res.n_values = compare_weights(v, p, full=full,
                                                                    sample=sample)
    return res


def check_vision_tower(verifier: str | os.PathLike, policy: str | os.PathLike, *,
                       allow_mismatch: bool = False, full: bool = False,
                       override_name: str = "allow_verifier_mismatch=true") -> TowerComparison:
    """:func:`compare_vision_tower`, raising :class:`VerifierMismatch` on any difference
    unless ``allow_mismatch`` (then a warning). ``override_name`` is how the error tells the
    user to override (the caller's option name)."""
    res = compare_vision_tower(verifier, policy, full=full)
    if not res.ok:
        if not allow_mismatch:
            raise VerifierMismatch(f"{res.summary()} (FiSAO scores tokens with the policy's own "
                                   f"vision encoder; pass {override_name} to use this verifier "
                                   "anyway)")
        warnings.warn(f"{res.summary()} (used anyway: {override_name})", stacklevel=2)
    return res


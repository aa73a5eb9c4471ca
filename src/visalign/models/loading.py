"""Load any ``transformers`` VLM with its processor and chat template as a :class:`VLM`.

The model class comes from ``config.model_type`` (LLaVA-1.5, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL,
...) with ``AutoModelForImageTextToText`` as the fallback; a LoRA adapter dir is applied with
peft. A dir that holds only an adapter (``adapter_config.json``, no ``config.json``) is loaded on
top of the base model it names.

Processors of video-capable models (Qwen2-VL) insist on a torchvision video processor. visalign
only feeds images, so where torchvision is missing the processor is assembled from its image
processor and tokenizer with an inert video-processor placeholder (:func:`build_processor`),
which still saves a normal ``processor_config.json``.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from visalign.io import DataError

# model_type -> transformers class name. Anything else goes through AutoModelForImageTextToText.
MODEL_CLASSES: dict[str, str] = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
}

_DTYPES = ("float32", "float16", "bfloat16", "auto")


def _torch_dtype(dtype: str):
    import torch

    if dtype == "auto":
        return "auto"
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}")
    return getattr(torch, dtype)


def resolve_device(device: str | None) -> str:
    """``"auto"``/None -> ``cuda`` when available, else ``cpu``; anything else unchanged."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@functools.lru_cache(maxsize=None)
def _no_video_processor_class():
    """An inert stand-in for a torchvision video processor (visalign feeds images only)."""
    from transformers.video_processing_utils import VideoProcessorMixin

    class NoVideoProcessor(VideoProcessorMixin):
        model_input_names = ["pixel_values_videos", "video_grid_thw"]

        def __init__(self, config: dict | None = None):
            super().__init__()
            self._config = dict(config or {})

        def __call__(self, *args, **kwargs):
            raise RuntimeError("video inputs need torchvision (pip install torchvision)")

        def to_dict(self) -> dict:
            # Round-trips the original config, so a saved processor loads normally elsewhere.
            return dict(self._config)

    return NoVideoProcessor


def _torchvision_available() -> bool:
    from transformers.utils import is_torchvision_available

    return is_torchvision_available()


def build_processor(processor_cls: type, *, image_processor: Any, tokenizer: Any,
                    chat_template: str | None, video_config: dict | None = None,
                    **kwargs: Any) -> Any:
    """Instantiate ``processor_cls``; without torchvision, give it an inert video processor."""
    import inspect

    params = inspect.signature(processor_cls.__init__).parameters
    if "video_processor" not in params:
        return processor_cls(image_processor=image_processor, tokenizer=tokenizer,
                             chat_template=chat_template, **kwargs)
    if _torchvision_available():
        import transformers

        cfg = dict(video_config or {})
        name = cfg.pop("video_processor_type", None)
        if not name or not hasattr(transformers, name):
            raise ValueError(f"cannot build a video processor from {video_config!r}")
        return processor_cls(image_processor=image_processor, tokenizer=tokenizer,
                             video_processor=getattr(transformers, name)(**cfg),
                             chat_template=chat_template, **kwargs)
    no_video_cls = _no_video_processor_class()

    class _Lenient(processor_cls):  # type: ignore[misc, valid-type]
        # ProcessorMixin type-checks sub-processors against VideoProcessorMixin, which it cannot
        # resolve without torchvision; accept the placeholder, then restore the real class.
        def check_argument_for_proper_class(self, argument_name, argument):
            if isinstance(argument, no_video_cls):
                return type(argument)
            return super().check_argument_for_proper_class(argument_name, argument)

    proc = _Lenient(image_processor=image_processor, tokenizer=tokenizer,
                    video_processor=no_video_cls(video_config), chat_template=chat_template,
                    **kwargs)
    proc.__class__ = processor_cls
    return proc


def _read_processor_config(path: Path) -> dict:
    for name in ("processor_config.json", "preprocessor_config.json"):
        f = path / name
        if f.exists():
            try:
                return json.loads(f.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise DataError(f, f"invalid JSON: {e.msg}") from None
    return {}


def _load_processor_without_torchvision(path: str, trust_remote_code: bool) -> Any:
    """Assemble the processor from its parts when AutoProcessor needs torchvision for video."""
    import inspect

    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    local = Path(path)
    cfg = _read_processor_config(local) if local.is_dir() else {}
    cls_name = cfg.get("processor_class")
    if not cls_name or not hasattr(transformers, cls_name):
        raise ImportError(f"{path}: cannot build processor {cls_name!r} without torchvision")
    processor_cls = getattr(transformers, cls_name)
    extra = {"trust_remote_code": True} if trust_remote_code else {}
    tokenizer = AutoTokenizer.from_pretrained(path, **extra)
    image_processor = AutoImageProcessor.from_pretrained(path, **extra)
    params = inspect.signature(processor_cls.__init__).parameters
    kwargs = {k: v for k, v in cfg.items()
              if k in params and k not in ("image_processor", "tokenizer", "video_processor",
                                           "chat_template")}
    template = None
    jinja = local / "chat_template.jinja"
    if jinja.exists():
        template = jinja.read_text(encoding="utf-8")
    template = template or getattr(tokenizer, "chat_template", None)
    return build_processor(processor_cls, image_processor=image_processor, tokenizer=tokenizer,
                           chat_template=template, video_config=cfg.get("video_processor"),
                           **kwargs)


def load_processor(path: str | os.PathLike, *, trust_remote_code: bool = False) -> Any:
    """``AutoProcessor.from_pretrained`` with a clear error for dirs that lack one."""
    from transformers import AutoProcessor

    path = str(path)
    local = Path(path)
    if local.is_dir() and not _read_processor_config(local):
        raise DataError(local, "no processor_config.json / preprocessor_config.json: a VLM dir "
                               "needs its processor (save it with processor.save_pretrained)")
    extra = {"trust_remote_code": True} if trust_remote_code else {}
    try:
        processor = AutoProcessor.from_pretrained(path, **extra)
    except (ImportError, AttributeError) as e:
        if _torchvision_available() or "orchvision" not in str(e) and "VIDEO_PROCESSOR" not in str(e):
            raise
        processor = _load_processor_without_torchvision(path, trust_remote_code)
    if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
        raise DataError(path, f"loaded {type(processor).__name__}, which is not an image+text "
                              "processor (no tokenizer or image_processor)")
    template = getattr(processor, "chat_template", None) or getattr(
        processor.tokenizer, "chat_template", None)
    if not template:
        raise DataError(path, "no chat template (chat_template.jinja, or chat_template in "
                              "tokenizer_config.json): visalign builds every prompt with it")
    if not getattr(processor, "chat_template", None):
        processor.chat_template = template
    return processor


def _adapter_base(path: Path) -> str | None:
    """The base model named by a LoRA-only dir, or None for a full model dir."""
    if (path / "config.json").exists() or not (path / "adapter_config.json").exists():
        return None
    cfg = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise DataError(path / "adapter_config.json", "no base_model_name_or_path",
                        field="base_model_name_or_path")
    return base


def load_vlm(path: str | os.PathLike, *, dtype: str = "float32", device: str = "cpu",
             adapter: str | os.PathLike | None = None, trust_remote_code: bool = False,
             attn_implementation: str | None = None, quantization_config: Any = None):
    """Load a VLM (local dir or hub id), its processor and chat template, as a :class:`VLM`.

    ``adapter`` is a peft LoRA dir applied on top (not merged). ``dtype`` is one of float32,
    float16, bfloat16, auto; ``device`` is a torch device string or ``"auto"``. The model is
    returned in eval mode; ``quantization_config`` (a transformers ``BitsAndBytesConfig``) loads
    the weights quantised, placed on ``device``. The processor (and chat template) is read from
    ``path``, or from the adapter dir when a LoRA-only dir is given as ``path``.
    """
    import transformers
    from transformers import AutoConfig, AutoModelForImageTextToText

    from visalign.models.adapter import VLM

    path = str(path)
    local = Path(path)
    if local.is_dir():
        base = _adapter_base(local)
        if base is not None:
            if adapter is not None:
                raise ValueError(f"{path} is a LoRA adapter dir; do not pass adapter= as well")
            adapter, path = path, base
    elif path.startswith(("/", ".", "~")) or path.count("/") != 1:
        # Not a hub id ("org/name") either: fail here rather than with a hub lookup error.
        raise DataError(path, "model dir not found")
    extra: dict[str, Any] = {"trust_remote_code": True} if trust_remote_code else {}
    config = AutoConfig.from_pretrained(path, **extra)
    cls_name = MODEL_CLASSES.get(config.model_type)
    model_cls = getattr(transformers, cls_name) if cls_name else AutoModelForImageTextToText
    kw: dict[str, Any] = dict(extra, dtype=_torch_dtype(dtype))
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    device = resolve_device(device)
    if quantization_config is not None:
        # bitsandbytes places quantised weights at load time; a quantised model cannot be moved
        kw.update(quantization_config=quantization_config, device_map={"": device})
    model = model_cls.from_pretrained(path, **kw)
    if quantization_config is None:
        model.to(device)
    proc_path = path
    if adapter is not None and _read_processor_config(Path(adapter)):
        proc_path = str(adapter)  # a trained adapter may ship an updated processor
    processor = load_processor(proc_path, trust_remote_code=trust_remote_code)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
        model.to(device)
    model.eval()
    return VLM(model, processor, family=config.model_type, name=str(adapter or path))

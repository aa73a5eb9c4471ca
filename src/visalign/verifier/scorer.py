"""The fine-grained verifier: CLIP scores of words (and whole responses) against an image.

FiSAO scores an object token y_t by "the dot product score of y_t and v of the pre-trained
vision encoder" (Eq. 8, S(y_t, v)). With a CLIP model that is S(word, image) =
``logit_scale.exp() · cos(text_emb(template.format(word)), image_emb)`` — CLIP's own logit,
≈ 100·cos for trained CLIPs. ``scale=False`` gives the bare cosine, a float a fixed factor.
The calibration (μ_gt, μ_hal, λ, S_min, S_max) must be computed with the same template and
scale as the training rewards; :class:`~visalign.verifier.reward.Calibration` records both.

Word embeddings are cached per word (one batched forward for all uncached words), so scoring
the same vocabulary over a whole training run costs one text forward per distinct word.

``pooling="patch"`` (not the paper's; an option for encoders whose patch tokens are aligned
with text, such as the micro-world CLIP's dense term): S(word, image) is the largest, over the
image's patches, probability that a patch shows ``word`` rather than one of a fixed label set
(``patch_labels``; a word outside it is added to it for its own score), with each patch put
through the vision model's final norm and projection as the class token is. Values lie in
(0, 1]. On the micro-world this separates the model's correct from its hallucinated mentions
better than the global score (token AUROC 0.84 vs 0.78, docs/research/fisao-on-the-micro-world.md);
a CLIP trained contrastively on the class token alone has no such patch alignment.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor


def _features(out: Any) -> Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output whose
    ``pooler_output`` is the projected embedding (transformers 5)."""
    if isinstance(out, Tensor):
        return out
    if getattr(out, "pooler_output", None) is not None:
        return out.pooler_output
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"cannot read features from {type(out).__name__}")


class ClipScorer:
    """S(word, image) from a ``transformers`` ``CLIPModel``.

    Args:
        clip_model: a ``CLIPModel`` (any model with ``get_text_features``/``get_image_features``
            and ``logit_scale``).
        processor: a ``CLIPProcessor`` (tokenizer + image processor), or a tokenizer alone if
            images are always given as pixel tensors.
        template: prompt the word is put in (``"{}"`` = the bare word).
        device: where the model runs (default: where it already is).
        scale: True = multiply cosines by ``logit_scale.exp()``; False = bare cosine; a float =
            that factor.
        batch_size: texts/images per forward.
    """

    def __init__(self, clip_model: Any, processor: Any, template: str = "a photo of a {}.",
                 device: str | torch.device | None = None, scale: bool | float = True,
                 batch_size: int = 256, pooling: str = "image",
                 patch_labels: Sequence[str] | None = None):
        if "{}" not in template:
            raise ValueError(f"template must contain '{{}}', got {template!r}")
        if pooling not in ("image", "patch"):
            raise ValueError(f"pooling must be 'image' or 'patch', got {pooling!r}")
        if pooling == "patch" and not patch_labels:
            raise ValueError("pooling='patch' needs patch_labels (the label set of the patch "
                             "softmax, e.g. the CHAIR categories)")
        self.pooling = pooling
        self.patch_labels = list(dict.fromkeys(patch_labels or []))
        self._label_set = set(self.patch_labels)
        self._label_emb: Tensor | None = None   # (L, d), built on first patch score
        self.model = clip_model.eval()
        if device is not None:
            self.model.to(device)
        self.device = next(self.model.parameters()).device
        self.processor = processor
        tok = getattr(processor, "tokenizer", None)
        self.tokenizer = processor if tok is None else tok
        self.image_processor = getattr(processor, "image_processor", None)
        self.template = template
        self.batch_size = int(batch_size)
        if scale is True:
            self.scale = float(self.model.logit_scale.detach().exp().item())
        elif scale is False:
            self.scale = 1.0
        else:
            self.scale = float(scale)
        self._cache: dict[str, Tensor] = {}

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, template: str = "a photo of a {}.",
                        device: str | torch.device | None = None,
                        dtype: torch.dtype | str = "float32",
                        scale: bool | float = True, batch_size: int = 256,
                        pooling: str = "image",
                        patch_labels: Sequence[str] | None = None) -> "ClipScorer":
        """Load a CLIP dir (``CLIPModel`` weights + processor files) from disk; no download.

        ``device``: where the verifier runs — the training device (``"cuda:0"``, a
        ``torch.device``), ``"auto"`` (CUDA when available), or None for the CPU.
        """
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        path = str(path)
        device = resolve_scorer_device(device)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        model = CLIPModel.from_pretrained(path, dtype=dtype, local_files_only=True)
        try:
            from transformers import AutoProcessor

            processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            if not hasattr(processor, "tokenizer"):
                raise TypeError
        except (OSError, ValueError, TypeError):
            # A dir with tokenizer + image-processor files but no processor config.
            tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
            improc = AutoImageProcessor.from_pretrained(path, local_files_only=True)
            processor = _Pair(tok, improc)
        return cls(model, processor, template=template, device=device, scale=scale,
                   batch_size=batch_size, pooling=pooling, patch_labels=patch_labels)

    # ------------------------------------------------------------------ embeddings
    @property
    def max_text_length(self) -> int:
        """Longest token sequence the text tower accepts (its position embeddings)."""
        cfg = getattr(self.model.config, "text_config", self.model.config)
        return int(getattr(cfg, "max_position_embeddings", 77))

    def _encode_texts(self, texts: Sequence[str]) -> Tensor:
        """(n, d) L2-normalised text embeddings, truncated to :attr:`max_text_length` tokens."""
        outs = []
        for s in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[s:s + self.batch_size]), padding=True,
                                 truncation=True, max_length=self.max_text_length,
                                 return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items()
                   if k in ("input_ids", "attention_mask")}
            with torch.no_grad():
                feats = _features(self.model.get_text_features(**enc)).float()
            outs.append(torch.nn.functional.normalize(feats, dim=-1))
        return torch.cat(outs) if outs else torch.zeros(0, self.embed_dim, device=self.device)

    @property
    def embed_dim(self) -> int:
        return int(getattr(self.model.config, "projection_dim", 0) or
                   self.model.text_projection.out_features)

    def text_embeddings(self, words: Iterable[str]) -> Tensor:
        """(n, d) L2-normalised embeddings of ``template.format(word)``, cached per word.

        All words not yet cached go through the text tower together (batches of
        ``batch_size``); cached words cost nothing.
        """
        words = list(words)
        missing = list(dict.fromkeys(w for w in words if w not in self._cache))
        if missing:
            emb = self._encode_texts([self.template.format(w) for w in missing])
            for w, e in zip(missing, emb):
                self._cache[w] = e
        if not words:
            return torch.zeros(0, self.embed_dim, device=self.device)
        return torch.stack([self._cache[w] for w in words])

    def clear_cache(self) -> None:
        self._cache.clear()
        self._label_emb = None

    def image_embeddings(self, images: Sequence[Any] | Tensor) -> Tensor:
        """(m, d) L2-normalised image embeddings; with ``pooling="patch"`` (m, 1 + P, d): the
        image embedding first, then its P projected patch embeddings.

        Args:
            images: PIL images (or arrays) run through the image processor in batches, or a
                ``pixel_values`` tensor (m, 3, H, W) already preprocessed.
        """
        if isinstance(images, Tensor):
            chunks = [images[s:s + self.batch_size] for s in range(0, images.shape[0],
                                                                  self.batch_size)]
        else:
            images = list(images)
            if self.image_processor is None:
                raise ValueError("this scorer has no image processor; pass pixel_values")
            chunks = [self.image_processor(images=images[s:s + self.batch_size],
                                           return_tensors="pt")["pixel_values"]
                      for s in range(0, len(images), self.batch_size)]
        outs = []
        dtype = next(self.model.parameters()).dtype
        for px in chunks:
            with torch.no_grad():
                if self.pooling == "patch":
                    feats = self._image_and_patches(px.to(self.device, dtype))
                else:
                    feats = _features(self.model.get_image_features(
                        pixel_values=px.to(self.device, dtype))).float()
            outs.append(torch.nn.functional.normalize(feats, dim=-1))
        if not outs:
            return torch.zeros(0, self.embed_dim, device=self.device)
        return torch.cat(outs)

    def _image_and_patches(self, px: Tensor) -> Tensor:
        """(m, 1 + P, d) unnormalised: the class token and every patch token, each through
        the vision model's final norm and the visual projection (CLIP's image-feature path)."""
        vm = self.model.vision_model
        hidden = vm(pixel_values=px).last_hidden_state                  # (m, 1 + P, h)
        pooled = vm.post_layernorm(hidden[:, :1])
        patches = vm.post_layernorm(hidden[:, 1:])
        return self.model.visual_projection(torch.cat([pooled, patches], 1)).float()

    def _global(self, image_emb: Tensor) -> Tensor:
        """The image embedding(s) of either pooling's output."""
        if self.pooling == "patch":
            return image_emb[..., 0, :]
        return image_emb

    def _patch_scores(self, words: Sequence[str], patches: Tensor) -> Tensor:
        """max over patches of P(word | patch) against the label set: (..., P, d) -> (..., n)."""
        t = self.text_embeddings(words)                                 # (n, d)
        if self._label_emb is None:
            self._label_emb = self.text_embeddings(self.patch_labels)   # (L, d)
        lab = self._label_emb
        lw = self.scale * patches @ t.T                                 # (..., P, n)
        z = torch.logsumexp(self.scale * patches @ lab.T, dim=-1, keepdim=True)  # (..., P, 1)
        inside = torch.tensor([w in self._label_set for w in words], device=lw.device)
        # a word outside the label set competes with the labels and itself
        logz = torch.where(inside, z, torch.logaddexp(z, lw))
        return (lw - logz).exp().amax(dim=-2)

    # ------------------------------------------------------------------ scores
    def _prep_image(self, image_emb: Tensor) -> Tensor:
        return torch.nn.functional.normalize(image_emb.to(self.device).float(), dim=-1)

    def score(self, words: Sequence[str], image_emb: Tensor) -> Tensor:
        """S(word, image) = scale · cos (Eq. 8's S(y_t, v)); with ``pooling="patch"`` the
        best patch's probability of the word (module docstring).

        Args:
            words: n words (entity names).
            image_emb: (d,) one image -> returns (n,); or (m, d) -> returns (m, n), every word
                against every image. With ``pooling="patch"``: (1 + P, d) or (m, 1 + P, d), as
                :meth:`image_embeddings` returns them.
        """
        img = self._prep_image(image_emb)
        if self.pooling == "patch":
            return self._patch_scores(words, img[..., 1:, :])
        t = self.text_embeddings(words)                        # (n, d)
        return self.scale * (img @ t.T)

    def score_pairs(self, words: Sequence[str], image_embs: Tensor) -> Tensor:
        """(n,) S(words[i], image i) for n (word, image) pairs; image_embs (n, d)."""
        if image_embs.dim() != (3 if self.pooling == "patch" else 2) or \
                image_embs.shape[0] != len(words):
            raise ValueError(f"score_pairs needs one image embedding per word ({len(words)}), "
                             f"got shape {tuple(image_embs.shape)}")
        if self.pooling == "patch":
            return torch.stack([self._patch_scores([w], self._prep_image(e)[1:])[0]
                                for w, e in zip(words, image_embs)])
        t = self.text_embeddings(words)
        return self.scale * (self._prep_image(image_embs) * t).sum(-1)

    def sentence_score(self, texts: Sequence[str], image_emb: Tensor) -> Tensor:
        """Sentence-level score: CLIP score of each whole response (no template, not cached),
        truncated to the text tower's :attr:`max_text_length` tokens.

        Args:
            texts: b responses.
            image_emb: (b, d) -> (b,) text i against image i; or (d,) -> (b,) all against it.
        """
        t = self._encode_texts(list(texts))                    # (b, d)
        img = self._prep_image(self._global(image_emb))
        if img.dim() == 1:
            return self.scale * (t @ img)
        if img.shape[0] != t.shape[0]:
            raise ValueError(f"sentence_score: {t.shape[0]} texts but {img.shape[0]} images")
        return self.scale * (t * img).sum(-1)


def resolve_scorer_device(device: str | torch.device | None) -> torch.device:
    """None -> the CPU (the verifier's default); ``"auto"`` -> CUDA when available."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class _Pair:
    """Minimal processor stand-in: a tokenizer and an image processor."""

    def __init__(self, tokenizer: Any, image_processor: Any):
        self.tokenizer = tokenizer
        self.image_processor = image_processor

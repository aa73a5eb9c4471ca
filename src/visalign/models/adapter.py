"""The VLM adapter: the one interface every trainer and evaluator uses to talk to a model.

A :class:`VLM` wraps a ``transformers`` image-text model with its processor. All prompt text is
produced by the model's own chat template, so the same code serves LLaVA-1.5, LLaVA-NeXT,
Qwen2-VL and the micro-world models:

- :meth:`VLM.encode` turns LLaVA-format conversations into a training batch whose labels cover
  only the assistant turns (and the end-of-turn token that closes each);
- :meth:`VLM.generate` decodes a batch (left padding), greedy or seeded sampling;
- :meth:`VLM.rollout` samples and also returns the exact sampled tokens as a training batch plus
  each response token's character span, for token-level PPO;
- :func:`sequence_logprobs` gives per-token log-probs of the labelled tokens.

How labels are found, for any template: each assistant turn's text span is the difference between
the template rendered up to that turn with the generation prompt and rendered through that turn;
tokens whose character offsets overlap such a span are labelled. This needs a template whose
renderings of a conversation's prefixes are prefixes of its full rendering (true of LLaVA, Qwen
and Llama templates) and is checked. Templates that do not close an assistant turn with the EOS
token get it appended, so trained models learn to stop.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from PIL import Image

from visalign.data.batch import IGNORE_INDEX, TOKEN_KEYS

IMAGE_PLACEHOLDER = "<image>"
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
          "system": "system"}


@dataclass
class Rollout:
    """Sampled responses and the training batch that reproduces them token for token.

    ``batch``: input_ids/attention_mask (right padded, prompt + response), image tensors, and
    labels = the sampled response tokens (through EOS when one was produced), -100 elsewhere.
    ``response_ids[i]`` are those tokens; ``response_offsets[i][k]`` is the (start, end) character
    span of response token k in ``texts[i]`` (empty for special tokens and pure whitespace).
    """

    texts: list[str]
    batch: dict[str, torch.Tensor]
    response_ids: list[list[int]]
    response_offsets: list[list[tuple[int, int]]]
    finished: list[bool] = field(default_factory=list)  # produced EOS within max_new_tokens

    @property
    def response_mask(self) -> torch.Tensor:
        """(b, T) bool: positions of response tokens in ``batch``."""
        return self.batch["labels"] != IGNORE_INDEX


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


def to_model(batch: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """Move a batch to the model's device; floating tensors (pixels) take the model's dtype."""
    device, dtype = _model_device_dtype(model)
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, dtype=dtype) if v.is_floating_point() else v.to(device)
        out[k] = v
    return out


def sequence_logprobs(model: torch.nn.Module, batch: dict[str, torch.Tensor], *,
                      temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-prob of each label token, shape (b, T), aligned with ``batch["labels"]``.

    ``out[i, t] = log p(labels[i, t] | tokens < t)`` (logits at t-1 predict token t), and 0 where
    ``labels == -100`` (so also at t = 0). Only labelled positions go through the float32
    log-softmax, which keeps memory at (n_labelled, vocab). Differentiable.
    """
    labels = batch["labels"]
    inputs = {k: v for k, v in to_model(batch, model).items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits
    labels = labels.to(logits.device)
    target = labels[:, 1:]
    mask = target != IGNORE_INDEX
    sel = logits[:, :-1][mask].float()
    if temperature != 1.0:
        sel = sel / temperature
    lp = sel.gather(-1, target[mask].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(sel, dim=-1)
    out = torch.zeros(labels.shape, dtype=lp.dtype, device=logits.device)
    tail = torch.zeros_like(out[:, 1:]).masked_scatter(mask, lp)
    return torch.cat([out[:, :1], tail], dim=1)


class _SeededSampler:
    """Logits processor that samples with pre-drawn uniforms, one row of draws per sample.

    ``generate`` runs greedily and this processor leaves a single finite logit: the token chosen
    by inverse-CDF sampling from softmax(logits / T) restricted to the top-p nucleus. Because each
    sample's draws come from its own seed, a sample's output does not depend on which other
    samples share its batch (resume and multi-process runs reproduce single runs).
    """

    def __init__(self, uniforms: torch.Tensor, prompt_len: int, temperature: float,
                 top_p: float):
        from transformers.generation.logits_process import TopPLogitsWarper

        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
        self.u = uniforms
        self.prompt_len = prompt_len
        self.temperature = temperature
        self.top_p = TopPLogitsWarper(top_p) if top_p < 1.0 else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_len
        scores = scores.float() / self.temperature
        if self.top_p is not None:
            scores = self.top_p(input_ids, scores)
        cdf = torch.softmax(scores, dim=-1).cumsum(-1)
        u = self.u[:, step].to(cdf.device).clamp_min(1e-12) * cdf[:, -1]
        token = torch.searchsorted(cdf, u.unsqueeze(-1)).clamp_max(scores.shape[-1] - 1)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, token, 0.0)


class VLM:
    """A loaded VLM: ``model``, ``processor``, ``tokenizer`` and ``family`` (config.model_type)."""

    def __init__(self, model: Any, processor: Any, *, family: str | None = None,
                 name: str = ""):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        cfg = getattr(model, "config", None)
        self.family = family or getattr(cfg, "model_type", "unknown")
        self.name = name
        self.image_token: str = getattr(processor, "image_token", None) or IMAGE_PLACEHOLDER
        self.chat_template: str = (getattr(processor, "chat_template", None)
                                   or getattr(self.tokenizer, "chat_template", None) or "")
        if not self.chat_template:
            raise ValueError(f"{name or self.family}: the processor has no chat template")
        gen_cfg = getattr(model, "generation_config", None)
        eos = getattr(gen_cfg, "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_token_ids: list[int] = [e for e in ([eos] if isinstance(eos, int) else list(eos))
                                         if e is not None]
        if not self.eos_token_ids:
            raise ValueError(f"{name or self.family}: no EOS token id in generation config or "
                             "tokenizer")
        pad = self.tokenizer.pad_token_id
        self.pad_token_id: int = pad if pad is not None else self.eos_token_ids[0]
        self._append_eos = not self._template_closes_with_eos()

    # ----------------------------------------------------------------- templates

    @property
    def device(self) -> torch.device:
        return _model_device_dtype(self.model)[0]

    def _render(self, conversations: list[list[dict]], *, add_generation_prompt: bool
                ) -> list[str]:
        if not conversations:
            return []
        return list(self.processor.apply_chat_template(
            conversations, chat_template=self.chat_template, tokenize=False,
            add_generation_prompt=add_generation_prompt))

    def _template_closes_with_eos(self) -> bool:
        marker = "Zq7xW"
        text = self._render([[{"role": "user", "content": [{"type": "text", "text": "q"}]},
                              {"role": "assistant", "content": [{"type": "text", "text": marker}]}]],
                            add_generation_prompt=False)[0]
        tail = text[text.rfind(marker) + len(marker):]
        eos_strings = [s for s in self.tokenizer.convert_ids_to_tokens(self.eos_token_ids) if s]
        return any(s in tail for s in eos_strings)

    def messages(self, conversation: Sequence[dict], *, with_image: bool = True) -> list[dict]:
        """LLaVA turns (``{"from", "value"}``) -> chat-template messages with content items.

        The image goes, as in LLaVA's preprocessing, in front of the text of the human turn that
        holds ``<image>`` (the first human turn when none does); the placeholder is removed from
        the text. ``{"role", "content"}`` messages are accepted as well.
        """
        msgs: list[dict] = []
        image_turn = None
        for j, turn in enumerate(conversation):
            role_key = "from" if "from" in turn else "role"
            role = _ROLES.get(turn.get(role_key))
            text = turn.get("value", turn.get("content"))
            if role is None:
                raise ValueError(f"turn {j}: unknown role {turn.get(role_key)!r} (expected "
                                 "human/gpt/system)")
            if not isinstance(text, str):
                raise ValueError(f"turn {j}: text must be a string, got {type(text).__name__}")
            if role == "user" and image_turn is None and IMAGE_PLACEHOLDER in text:
                image_turn = len(msgs)
            msgs.append({"role": role, "content": [{"type": "text", "text": text}]})
        users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
        if not users:
            raise ValueError("conversation has no human turn")
        first_other = next(i for i, m in enumerate(msgs) if m["role"] != "system")
        if msgs[first_other]["role"] != "user":
            raise ValueError("conversation must start with a human turn")
        if image_turn is None:
            image_turn = users[0]
        for i, m in enumerate(msgs):
            item = m["content"][0]
            if IMAGE_PLACEHOLDER in item["text"]:
                item["text"] = item["text"].replace(IMAGE_PLACEHOLDER, "").strip()
            if with_image and i == image_turn:
                m["content"].insert(0, {"type": "image"})
            if self._append_eos and m["role"] == "assistant":
                item["text"] = item["text"] + (self.tokenizer.eos_token or "")
        return msgs

    def prompt_text(self, question: str) -> str:
        """The chat-templated prompt (image placeholder + question + generation prompt)."""
        return self._render([self.messages([{"from": "human", "value": question}])],
                            add_generation_prompt=True)[0]

    def _prompt_texts(self, prompts: Sequence[str | Sequence[dict]]) -> list[str]:
        convs = [self.messages([{"from": "human", "value": p}] if isinstance(p, str) else p)
                 for p in prompts]
        return self._render(convs, add_generation_prompt=True)

    # ------------------------------------------------------------------ encode

    def _process(self, images: Sequence[Image.Image], texts: list[str], *, padding_side: str,
                 offsets: bool = False) -> dict[str, Any]:
        bos = self.tokenizer.bos_token
        # A template that writes BOS itself must not get a second one from the tokenizer.
        add_special = not (bos and texts and texts[0].startswith(bos))
        kw: dict[str, Any] = {}
        if offsets:
            kw.update(return_offsets_mapping=True, return_text_replacement_offsets=True)
        out = self.processor(images=list(images), text=texts, padding=True,
                             padding_side=padding_side, add_special_tokens=add_special,
                             return_tensors="pt", **kw)
        return dict(out)

    def encode(self, images: Sequence[Image.Image], conversations: Sequence[Sequence[dict]], *,
               max_length: int | None = None) -> dict[str, torch.Tensor]:
        """A training batch for (image, conversation) pairs (CPU tensors, right padding).

        Keys: input_ids, attention_mask, labels, the processor's image tensors (pixel_values,
        image_grid_thw, image_sizes, ...) and mm_token_type_ids where the model needs it. Labels
        are -100 everywhere except the assistant answers and the end-of-turn token after each.
        ``max_length`` truncates the sequence (never inside the image tokens: that raises).
        """
        if len(images) != len(conversations):
            raise ValueError(f"{len(images)} images for {len(conversations)} conversations")
        msgs = []
        for i, c in enumerate(conversations):
            try:
                msgs.append(self.messages(c))
            except ValueError as e:
                raise ValueError(f"conversation {i}: {e}") from None
        gen_req, full_req, owner = [], [], []
        for i, m in enumerate(msgs):
            for j, turn in enumerate(m):
                if turn["role"] == "assistant":
                    gen_req.append(m[:j])
                    full_req.append(m[:j + 1])
                    owner.append(i)
        full_texts = self._render(msgs, add_generation_prompt=False)
        gen_texts = self._render(gen_req, add_generation_prompt=True)
        pref_texts = self._render(full_req, add_generation_prompt=False)
        spans: list[list[tuple[int, int]]] = [[] for _ in msgs]
        for i, g, f in zip(owner, gen_texts, pref_texts):
            if not (f.startswith(g) and full_texts[i].startswith(f)):
                raise ValueError(
                    f"{self.name or self.family}: the chat template does not render a "
                    "conversation's prefixes as prefixes of the whole conversation; assistant "
                    "turns cannot be located for label masking")
            start, end = len(g), len(f)
            while end > start and f[end - 1].isspace():
                end -= 1  # trailing newlines after an end-of-turn token are not the answer
            spans[i].append((start, end))

        enc = self._process(images, full_texts, padding_side="right", offsets=True)
        offsets = enc.pop("offset_mapping")
        replacements = enc.pop("text_replacement_offsets", None)
        input_ids = enc["input_ids"]
        labelled = torch.zeros_like(input_ids, dtype=torch.bool)
        tok_start, tok_end = offsets[..., 0], offsets[..., 1]
        nonempty = tok_end > tok_start
        for i, sample_spans in enumerate(spans):
            shifts = self._replacement_shifts(full_texts[i], replacements, i, input_ids[i])
            for s, e in sample_spans:
                s2, e2 = _shift(s, shifts), _shift(e, shifts)
                labelled[i] |= nonempty[i] & (tok_end[i] > s2) & (tok_start[i] < e2)
                # A lone-space token (" " before a word the BPE splits) has its offsets trimmed
                # to an empty span; inside an answer it is still answer text to be learned.
                labelled[i] |= ~nonempty[i] & (tok_start[i] > s2) & (tok_start[i] < e2)
        labelled &= enc["attention_mask"].bool()
        enc["labels"] = input_ids.masked_fill(~labelled, IGNORE_INDEX)
        if max_length is not None and input_ids.shape[1] > max_length:
            enc = self._truncate(enc, max_length)
        return enc

    def _image_token_ids(self) -> list[int]:
        ids = []
        for attr in ("image_token_id", "image_token_index"):
            v = getattr(self.model.config, attr, None)
            if isinstance(v, int):
                ids.append(v)
        if not ids:
            ids.append(self.tokenizer.convert_tokens_to_ids(self.image_token))
        return ids

    def _replacement_shifts(self, text: str, replacements: Any, i: int,
                            ids: torch.Tensor) -> list[tuple[int, int]]:
        """(position in the unexpanded text, chars added there) for each expanded placeholder."""
        if replacements is not None:
            return [(r["span"][1], (r["new_span"][1] - r["new_span"][0])
                     - (r["span"][1] - r["span"][0])) for r in replacements[i]]
        # Processors that do not report replacements: one image per sample, expanded into
        # repeated image tokens (LLaVA, LLaVA-NeXT, Qwen2-VL all do this).
        pos = [m.end() for m in re.finditer(re.escape(self.image_token), text)]
        if len(pos) != 1:
            return []
        n = int(torch.isin(ids, torch.tensor(self._image_token_ids())).sum())
        return [(pos[0], (n - 1) * len(self.image_token))]

    def _truncate(self, enc: dict[str, Any], max_length: int) -> dict[str, Any]:
        image_ids = torch.tensor(self._image_token_ids())
        if torch.isin(enc["input_ids"][:, max_length:], image_ids).any():
            raise ValueError(f"max_length={max_length} would cut image tokens; raise it")
        return {k: (v[:, :max_length] if k in TOKEN_KEYS else v) for k, v in enc.items()}

    # ---------------------------------------------------------------- generate

    def _uniforms(self, n: int, steps: int, generator_seed: int | None,
                  seeds: Sequence[int] | None) -> torch.Tensor:
        if seeds is not None:
            if len(seeds) != n:
                raise ValueError(f"{len(seeds)} seeds for {n} prompts")
            return torch.stack([torch.rand(steps, generator=torch.Generator().manual_seed(int(s)))
                                for s in seeds])
        if generator_seed is not None:
            return torch.rand(n, steps, generator=torch.Generator().manual_seed(generator_seed))
        return torch.rand(n, steps)  # the global RNG (torch.manual_seed) decides

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.model.train(was_training)

    def _generate_tokens(self, images: Sequence[Image.Image],
                         prompts: Sequence[str | Sequence[dict]], *, max_new_tokens: int,
                         do_sample: bool, temperature: float, top_p: float,
                         generator_seed: int | None, seeds: Sequence[int] | None
                         ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        from transformers import GenerationConfig, LogitsProcessorList

        from visalign.models.decoding import growing_cache

        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
        texts = self._prompt_texts(prompts)
        inputs = to_model(self._process(images, texts, padding_side="left"), self.model)
        prompt_len = inputs["input_ids"].shape[1]
        # A fresh config: decoding is exactly what the caller asked for, not whatever sampling
        # defaults a checkpoint's generation_config.json carries.
        # Image placeholder tokens are never generated: a sampled one would make the response
        # unreplayable (the processor expects image features for every such token).
        gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False,
                                   eos_token_id=self.eos_token_ids, pad_token_id=self.pad_token_id,
                                   bos_token_id=self.tokenizer.bos_token_id,
                                   suppress_tokens=self._image_token_ids())
        processors = LogitsProcessorList()
        if do_sample:
            u = self._uniforms(len(texts), max_new_tokens, generator_seed, seeds)
            processors.append(_SeededSampler(u, prompt_len, temperature, top_p))
        # Keys/values written in place rather than concatenated every step (same logits).
        cache = growing_cache(self.model, prompt_len + min(max_new_tokens, 256))
        extra = {} if cache is None else {"cache": cache}
        with self._eval_mode():
            # synced_gpus=False: transformers turns it on for ZeRO-3/FSDP models, stepping
            # every rank until the longest finishes with a collective per token; visalign
            # generates on gathered weights (training.engine.generation_model), where no
            # forward needs another rank
            out = self.model.generate(**inputs, generation_config=gen_cfg,
                                      logits_processor=processors, synced_gpus=False,
                                      **extra)
        return inputs, out[:, prompt_len:]

    def _responses(self, new: torch.Tensor) -> tuple[list[list[int]], torch.Tensor, list[bool]]:
        """Cut each row after its first EOS: (token lists, (b, N) bool mask, finished flags)."""
        is_eos = torch.isin(new, torch.tensor(self.eos_token_ids, device=new.device))
        finished = is_eos.any(1)
        length = torch.where(finished, is_eos.int().argmax(1) + 1,
                             torch.full_like(finished, new.shape[1], dtype=torch.long))
        mask = torch.arange(new.shape[1], device=new.device)[None, :] < length[:, None]
        rows = [r[:n].tolist() for r, n in zip(new.cpu(), length.cpu().tolist())]
        return rows, mask, finished.cpu().tolist()

    def _decode(self, rows: list[list[int]]) -> list[str]:
        return [t.strip() for t in self.tokenizer.batch_decode(
            rows, skip_special_tokens=True, clean_up_tokenization_spaces=False)]

    def generate(self, images: Sequence[Image.Image], prompts: Sequence[str | Sequence[dict]], *,
                 max_new_tokens: int = 64, do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, generator_seed: int | None = None,
                 seeds: Sequence[int] | None = None) -> list[str]:
        """Answer each (image, prompt) pair; returns the decoded new text, stripped.

        A prompt is a question (``<image>`` optional; the image is placed by the template) or a
        LLaVA conversation ending with a human turn. Greedy by default. Sampling draws from the
        global torch RNG, or reproducibly from ``generator_seed`` (one stream for the batch) or
        ``seeds`` (one per prompt: independent of batch composition).
        """
        _, new = self._generate_tokens(images, prompts, max_new_tokens=max_new_tokens,
                                       do_sample=do_sample, temperature=temperature, top_p=top_p,
                                       generator_seed=generator_seed, seeds=seeds)
        rows, _, _ = self._responses(new)
        return self._decode(rows)

    def rollout(self, images: Sequence[Image.Image], prompts: Sequence[str | Sequence[dict]], *,
                max_new_tokens: int = 64, do_sample: bool = True, temperature: float = 1.0,
                top_p: float = 1.0, generator_seed: int | None = None,
                seeds: Sequence[int] | None = None) -> Rollout:
        """Sample responses (default: sampling) and return them with their training batch.

        The batch holds the prompt tokens as the processor made them and the sampled tokens
        themselves (not a re-tokenization of the text), right padded, on the model's device.
        """
        inputs, new = self._generate_tokens(images, prompts, max_new_tokens=max_new_tokens,
                                            do_sample=do_sample, temperature=temperature,
                                            top_p=top_p, generator_seed=generator_seed,
                                            seeds=seeds)
        rows, resp_mask, finished = self._responses(new)
        prompt_mask = inputs["attention_mask"].bool()
        b, p_len = prompt_mask.shape
        keep = torch.cat([prompt_mask, resp_mask], dim=1)
        # Stable sort moves kept tokens to the front in order: left-padded prompt + response
        # become one right-padded sequence whose positions match those used while sampling.
        order = torch.argsort((~keep).int(), dim=1, stable=True)
        kept = keep.gather(1, order)
        length = int(kept.sum(1).max())
        order, kept = order[:, :length], kept[:, :length]

        def relayout(prompt_part: torch.Tensor, resp_part: torch.Tensor, fill: int) -> torch.Tensor:
            x = torch.cat([prompt_part, resp_part], dim=1).gather(1, order)
            return x.masked_fill(~kept, fill)

        batch: dict[str, torch.Tensor] = {
            "input_ids": relayout(inputs["input_ids"], new, self.pad_token_id),
            "attention_mask": kept.long(),
            "labels": relayout(torch.full_like(inputs["input_ids"], IGNORE_INDEX),
                               new.masked_fill(~resp_mask, IGNORE_INDEX), IGNORE_INDEX),
        }
        for k, v in inputs.items():
            if k in batch:
                continue
            if k in TOKEN_KEYS:
                batch[k] = relayout(v, torch.zeros_like(new, dtype=v.dtype), 0)
            else:
                batch[k] = v
        texts, offsets = self._decode_with_offsets(rows)
        return Rollout(texts=texts, batch=batch, response_ids=rows, response_offsets=offsets,
                       finished=finished)

    def _decode_with_offsets(self, rows: list[list[int]]
                             ) -> tuple[list[str], list[list[tuple[int, int]]]]:
        """Decoded, stripped texts and each token's char span in them (see
        :func:`visalign.models.decoding.token_char_spans`)."""
        from visalign.models.decoding import token_char_spans

        return token_char_spans(self.tokenizer, rows)

    # -------------------------------------------------------------------- misc

    def save_pretrained(self, out_dir: str) -> None:
        """Save the model (or only its LoRA adapter) and the processor to ``out_dir``."""
        self.model.save_pretrained(out_dir)
        self.processor.save_pretrained(out_dir)


def _shift(pos: int, shifts: list[tuple[int, int]]) -> int:
    """Map a char position in the unexpanded text to the placeholder-expanded text."""
    return pos + sum(delta for at, delta in shifts if at <= pos)

"""The faster decoding path gives the answers of the plain one: the growing KV cache returns
what concatenation returns; greedy and seeded sampled tokens of ``VLM.generate`` and
``VLM.rollout`` are the same token ids with and without it (tiny LLaVA, tiny Qwen2-VL and the
shipped micro-world base); each record's sampled tokens depend only on its seed; the per-token
character spans equal those from decoding every prefix, for byte-level and other tokenizers."""

from __future__ import annotations

import random

import pytest
import torch

from _tiny import solid_images
from visalign.models import decoding
from visalign.models.decoding import GrowingLayer, growing_cache, token_char_spans

PROMPTS = ["Describe this image in detail.", "What is in the image?", "Is there a dog?",
           "Describe the image.", "How many objects are there?"]


def prefix_spans(tokenizer, rows):
    """Reference: each token's span from decoding every prefix of its row."""
    kw = dict(skip_special_tokens=True, clean_up_tokenization_spaces=False)
    texts, offsets = [], []
    for r in rows:
        pre = [tokenizer.decode(r[:k], **kw) for k in range(1, len(r) + 1)]
        full = pre[-1] if pre else ""
        text = full.strip()
        lead = len(full) - len(full.lstrip())
        spans, prev = [], 0
        for p in pre:
            end = min(max(prev, len(p) - lead), len(text))
            start = prev
            while start < end and text[start].isspace():
                start += 1
            spans.append((start, end))
            prev = end
        texts.append(text)
        offsets.append(spans)
    return texts, offsets


def test_growing_layer_returns_what_concatenation_returns():
    from transformers.cache_utils import DynamicLayer

    torch.manual_seed(0)
    plain, grow = DynamicLayer(), GrowingLayer(capacity=3)
    for n in (5, 1, 1, 4, 1):  # a prefill longer than the buffer, then growth past it
        k, v = torch.randn(2, 3, n, 4), torch.randn(2, 3, n, 4)
        a, b = plain.update(k, v), grow.update(k, v)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert grow.get_seq_length() == plain.get_seq_length()
    assert grow.capacity >= 12
    for layer in (plain, grow):
        layer.crop(-2)
        layer.batch_select_indices(torch.tensor([1]))
    k, v = torch.randn(1, 3, 1, 4), torch.randn(1, 3, 1, 4)
    a, b = plain.update(k, v), grow.update(k, v)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and b[0].shape[-2] == 11


def _load(path):
    from visalign.models.loading import load_vlm

    return load_vlm(str(path))


def _images(n):
    rng = random.Random(0)
    out = []
    for i, img in enumerate(solid_images(n)):
        # speckle so that images differ in more than colour
        px = img.load()
        for _ in range(200):
            px[rng.randrange(img.width), rng.randrange(img.height)] = (
                rng.randrange(256), rng.randrange(256), rng.randrange(256))
        out.append(img)
    return out


def _tokens(vlm, images, prompts, monkeypatch, plain: bool, **kw):
    with monkeypatch.context() as m:
        if plain:  # generate's own DynamicCache, as before the growing cache
            m.setattr(decoding, "growing_cache", lambda *a, **k: None)
        _, new = vlm._generate_tokens(images, prompts, **kw)
    return new


def _check_same_tokens(vlm, monkeypatch, n, batch, max_new):
    images, prompts = _images(n), [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    settings = [dict(do_sample=False, temperature=1.0, top_p=1.0, generator_seed=None,
                     seeds=None),
                dict(do_sample=True, temperature=1.0, top_p=0.9, generator_seed=None,
                     seeds=list(range(100, 100 + n)))]
    for kw in settings:
        for s in range(0, n, batch):
            sl = slice(s, s + batch)
            part = {**kw, "seeds": kw["seeds"][sl] if kw["seeds"] else None}
            new = _tokens(vlm, images[sl], prompts[sl], monkeypatch, False,
                          max_new_tokens=max_new, **part)
            old = _tokens(vlm, images[sl], prompts[sl], monkeypatch, True,
                          max_new_tokens=max_new, **part)
            assert torch.equal(new, old), f"{kw['do_sample'] and 'sampled' or 'greedy'} " \
                                          f"tokens differ in batch {s}"
    # the growing cache was really used
    assert growing_cache(vlm.model, 8) is not None


@pytest.mark.parametrize("which", ["llava", "qwen2vl"])
def test_tiny_models_decode_the_same_tokens_with_the_growing_cache(which, tiny_llava_dir,
                                                                   tiny_qwen2vl_dir,
                                                                   monkeypatch):
    vlm = _load(tiny_llava_dir if which == "llava" else tiny_qwen2vl_dir)
    _check_same_tokens(vlm, monkeypatch, n=6, batch=4, max_new=24)


def test_shipped_base_decodes_the_same_tokens_with_the_growing_cache(monkeypatch):
    from visalign.methods.base_model.packaged import packaged_base_dir

    vlm = _load(packaged_base_dir())
    _check_same_tokens(vlm, monkeypatch, n=10, batch=6, max_new=64)


def test_rollout_matches_the_plain_path_and_sampled_tokens_follow_the_seed(monkeypatch):
    from visalign.methods.base_model.packaged import packaged_base_dir

    vlm = _load(packaged_base_dir())
    images, prompts = _images(6), [PROMPTS[i % len(PROMPTS)] for i in range(6)]
    seeds = [7, 8, 9, 10, 11, 12]
    ro = vlm.rollout(images, prompts, max_new_tokens=48, seeds=seeds)
    with monkeypatch.context() as m:
        m.setattr(decoding, "growing_cache", lambda *a, **k: None)
        m.setattr(type(vlm), "_decode_with_offsets",
                  lambda self, rows: prefix_spans(self.tokenizer, rows))
        ref = vlm.rollout(images, prompts, max_new_tokens=48, seeds=seeds)
    assert ro.response_ids == ref.response_ids and ro.texts == ref.texts
    assert ro.response_offsets == ref.response_offsets and ro.finished == ref.finished
    assert ro.batch.keys() == ref.batch.keys()
    assert all(torch.equal(ro.batch[k], ref.batch[k]) for k in ro.batch)
    # A record's draws come from its own seed: alone, it samples from the same uniforms. (Its
    # tokens may still differ from the batched ones where padding changes the arithmetic.)
    u_batch = vlm._uniforms(6, 48, None, seeds)
    u_alone = vlm._uniforms(1, 48, None, seeds[3:4])
    assert torch.equal(u_batch[3], u_alone[0])
    # nothing carries over from one call's cache to the next
    again = vlm.rollout(images, prompts, max_new_tokens=48, seeds=seeds)
    assert again.response_ids == ro.response_ids
    other = vlm.rollout(images, prompts, max_new_tokens=48, seeds=[s + 1 for s in seeds])
    assert other.response_ids != ro.response_ids


def test_token_spans_equal_prefix_decoding_for_byte_level_bpe(tiny_llava_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_llava_dir))
    assert decoding._byte_level_decoder(tok)
    rng = random.Random(0)
    specials = set(tok.all_special_ids)
    ids = list(range(len(tok)))
    rows = [[rng.choice(ids) for _ in range(rng.randint(0, 40))] for _ in range(40)]
    # text with multi-byte characters, so that single tokens hold partial UTF-8
    for text in ("naïve café — 東京 🙂 ok", "  leading space and trailing  ", "plain words here"):
        rows.append(tok.encode(text, add_special_tokens=False))
        rows.append(tok.encode(text, add_special_tokens=False) + [tok.eos_token_id])
    rows.append([])
    rows.append([i for i in ids if i in specials])
    assert token_char_spans(tok, rows) == prefix_spans(tok, rows)


def test_token_spans_equal_prefix_decoding_for_other_tokenizers():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # A SentencePiece-style (Metaspace) tokenizer: its decoder strips the first word's space,
    # so per-token decoding is not prefix decoding and the prefix path must be taken.
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.train_from_iterator(["a red ball next to a blue cube", "two dogs on the grass"] * 20,
                                trainers.BpeTrainer(vocab_size=80, special_tokens=["<unk>",
                                                                                    "</s>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")
    assert not decoding._byte_level_decoder(tok)
    rows = [tok.encode(t, add_special_tokens=False) for t in
            ("a red ball next to a blue cube", "two dogs", " the grass")]
    rows.append(rows[0] + [tok.eos_token_id])
    assert token_char_spans(tok, rows) == prefix_spans(tok, rows)

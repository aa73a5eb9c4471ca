"""ClipScorer on a tiny random CLIPModel built here (no downloads)."""

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from visalign.verifier.scorer import ClipScorer

CORPUS = ["a photo of a dog.", "a photo of a cat.", "a photo of a bird on a red car.",
          "a small green tree next to a yellow bus and a blue cube."] * 10


def _tiny_clip():
    from transformers import (CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor,
                              PreTrainedTokenizerFast)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # "</s>" gets id 0: CLIP pools at the first EOS (id 2 would select the legacy argmax path).
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["</s>", "<s>", "<pad>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos, eos, pad = (tok.token_to_id(t) for t in ("<s>", "</s>", "<pad>"))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", bos), ("</s>", eos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    config = CLIPConfig(
        text_config=dict(vocab_size=len(fast), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=pad),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=2),
        projection_dim=16)
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    improc = CLIPImageProcessorPil(size={"shortest_edge": 32},
                                   crop_size={"height": 32, "width": 32})
    return model, CLIPProcessor(image_processor=improc, tokenizer=fast)


def _images(n):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def clip():
    return _tiny_clip()


def _count_text_forwards(model):
    calls = []
    model.text_model.register_forward_hook(
        lambda mod, args, kwargs, out: calls.append(kwargs.get("input_ids", args[0] if args
                                                               else None).shape[0]),
        with_kwargs=True)
    return calls


def test_text_embeddings_cached_per_word(clip):
    model, proc = clip
    scorer = ClipScorer(model, proc)
    calls = _count_text_forwards(model)
    e1 = scorer.text_embeddings(["dog", "cat", "dog"])
    assert e1.shape == (3, 16) and calls == [2]            # one forward, unique words only
    e2 = scorer.text_embeddings(["cat", "dog"])
    assert calls == [2]                                    # all cached: no forward
    assert torch.equal(e2[0], e1[1]) and torch.equal(e2[1], e1[0])
    scorer.text_embeddings(["bird", "cat"])
    assert calls == [2, 1]                                 # only the new word
    assert torch.allclose(e1.norm(dim=-1), torch.ones(3))


def test_score_is_scale_times_cosine(clip):
    model, proc = clip
    scorer = ClipScorer(model, proc, template="a photo of a {}.")
    imgs = _images(2)
    img = scorer.image_embeddings(imgs)                    # (2, d), batched
    assert img.shape == (2, 16)
    with torch.no_grad():
        t = model.get_text_features(**proc.tokenizer(["a photo of a dog."],
                                                     return_tensors="pt")).pooler_output
        v = model.get_image_features(
            pixel_values=proc.image_processor(images=imgs[:1], return_tensors="pt")
            ["pixel_values"]).pooler_output
    cos = torch.nn.functional.cosine_similarity(t, v).item()
    scale = model.logit_scale.exp().item()
    assert scorer.scale == pytest.approx(scale)
    assert scorer.score(["dog"], img[0]).item() == pytest.approx(scale * cos, abs=1e-5)
    both = scorer.score(["dog", "cat"], img)               # (m images, n words)
    assert both.shape == (2, 2) and both[0, 0].item() == pytest.approx(scale * cos, abs=1e-5)
    pairs = scorer.score_pairs(["dog", "cat"], img)
    assert torch.allclose(pairs, torch.stack([both[0, 0], both[1, 1]]))
    bare = ClipScorer(model, proc, scale=False)
    assert bare.score(["dog"], img[0]).item() == pytest.approx(cos, abs=1e-6)
    # preprocessed pixel values give the same embeddings
    px = proc.image_processor(images=imgs, return_tensors="pt")["pixel_values"]
    assert torch.allclose(scorer.image_embeddings(px), img, atol=1e-6)


def test_patch_pooling_scores_the_best_patch_against_the_label_set(clip):
    model, proc = clip
    labels = ["dog", "cat", "car"]
    scorer = ClipScorer(model, proc, pooling="patch", patch_labels=labels)
    imgs = _images(2)
    emb = scorer.image_embeddings(imgs)                    # (2, 1 + 16 patches, d)
    assert emb.shape == (2, 17, 16)
    # the first row is the image embedding of pooling="image"
    glob = ClipScorer(model, proc).image_embeddings(imgs)
    assert torch.allclose(emb[:, 0], glob, atol=1e-5)
    # by hand: patch tokens -> final norm -> projection -> cosine with the labels' texts
    px = proc.image_processor(images=imgs[:1], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        h = model.vision_model(pixel_values=px).last_hidden_state[0, 1:]
        p = torch.nn.functional.normalize(
            model.visual_projection(model.vision_model.post_layernorm(h)), dim=-1)
        t = torch.nn.functional.normalize(model.get_text_features(**proc.tokenizer(
            [f"a photo of a {w}." for w in labels + ["bird"]], padding=True,
            return_tensors="pt")).pooler_output, dim=-1)
    logits = scorer.scale * p @ t.T                        # (16, 4)
    in_set = torch.softmax(logits[:, :3], -1).amax(0)      # dog, cat, car vs the labels
    bird = torch.softmax(logits, -1)[:, 3].amax(0)         # a word outside joins the set
    got = scorer.score(["dog", "cat", "car", "bird"], emb[0])
    assert torch.allclose(got, torch.cat([in_set, bird[None]]), atol=1e-5)
    assert ((got > 0) & (got <= 1)).all()
    # batched over images, and pairs, agree with one-image calls
    both = scorer.score(["dog", "bird"], emb)
    assert both.shape == (2, 2) and torch.allclose(both[0], got[[0, 3]], atol=1e-6)
    assert torch.allclose(scorer.score_pairs(["dog", "bird"], emb),
                          torch.stack([both[0, 0], both[1, 1]]))
    # sentence scores read the image embedding, as with pooling="image"
    assert torch.allclose(scorer.sentence_score(["a dog."], emb[0]),
                          ClipScorer(model, proc).sentence_score(["a dog."], glob[0]), atol=1e-5)
    with pytest.raises(ValueError, match="patch_labels"):
        ClipScorer(model, proc, pooling="patch")
    with pytest.raises(ValueError, match="pooling"):
        ClipScorer(model, proc, pooling="mean")


def test_sentence_score_truncates_long_responses(clip):
    model, proc = clip
    scorer = ClipScorer(model, proc)
    img = scorer.image_embeddings(_images(2))
    long = " ".join(["a photo of a bird on a red car."] * 20)   # far over 16 positions
    s = scorer.sentence_score([long, "a dog."], img)
    assert s.shape == (2,) and torch.isfinite(s).all()
    enc = proc.tokenizer([long], truncation=True, max_length=16, return_tensors="pt")
    assert enc["input_ids"].shape[1] == 16 and enc["input_ids"][0, -1].item() == \
        proc.tokenizer.eos_token_id
    with torch.no_grad():
        t = torch.nn.functional.normalize(model.get_text_features(**enc).pooler_output, dim=-1)
    assert s[0].item() == pytest.approx(scorer.scale * (t[0] @ img[0]).item(), abs=1e-5)
    assert scorer.sentence_score(["a dog.", "a cat."], img[0]).shape == (2,)


def test_from_pretrained_roundtrip(clip, tmp_path):
    model, proc = clip
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    loaded = ClipScorer.from_pretrained(tmp_path, template="a {}")
    ref = ClipScorer(model, proc, template="a {}")
    img = ref.image_embeddings(_images(1))
    assert torch.allclose(loaded.score(["dog", "car"], img[0]), ref.score(["dog", "car"], img[0]),
                          atol=1e-5)


def test_project_tiny_clip_dir(tmp_path):
    """The verifier the tiny LLaVA was built from loads and scores (tests/_tiny.py)."""
    from _tiny import build_tiny_clip_dir

    scorer = ClipScorer.from_pretrained(build_tiny_clip_dir(tmp_path))
    img = scorer.image_embeddings([Image.new("RGB", (64, 64), "red")])
    s = scorer.score(["ball", "cube", "ball"], img[0])
    assert s.shape == (3,) and s[0].item() == pytest.approx(s[2].item())

"""Image-dependence and vision-probe checks (visalign.eval.grounding)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from visalign.eval.grounding import image_dependence, pooled_vision_features, \
    vision_probe_auroc, yes_no_scores
from visalign.io import DataError


@pytest.fixture(scope="module")
def vlm(tiny_llava_dir):
    from visalign.models import load_vlm

    v = load_vlm(str(tiny_llava_dir))
    v.model.eval()
    return v


def _images(n: int, size: int = 32) -> list:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        arr = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
        out.append(Image.fromarray(arr))
    return out


def _pope_records(tmp_path, n: int = 6) -> list[dict]:
    recs = []
    for i, im in enumerate(_images(n)):
        p = tmp_path / f"{i}.png"
        im.save(p)
        recs.append({"image": p.name, "question": "Is there a cat in the image?",
                     "label": "yes" if i % 2 else "no"})
    return recs


def test_probe_finds_linearly_coded_categories_and_not_random_ones():
    g = torch.Generator().manual_seed(1)
    y = (torch.rand(400, 5, generator=g) < 0.4).float()
    x = torch.cat([y * 2.0 + 0.3 * torch.randn(400, 5, generator=g),
                   torch.randn(400, 11, generator=g)], 1)
    good = vision_probe_auroc(x[:300], y[:300], x[300:], y[300:])
    assert good["macro_auroc"] > 0.95 and good["categories"] == 5
    shuffled = y[torch.randperm(400, generator=g)]
    bad = vision_probe_auroc(x[:300], shuffled[:300], x[300:], shuffled[300:])
    assert 0.3 < bad["macro_auroc"] < 0.7


def test_probe_rejects_mismatched_rows():
    with pytest.raises(ValueError, match="same number of rows"):
        vision_probe_auroc(torch.zeros(3, 2), torch.zeros(4, 1), torch.zeros(2, 2),
                           torch.zeros(2, 1))


def test_scores_depend_on_the_image_and_not_on_batching(vlm):
    ims = _images(4)
    qs = ["Is there a cat in the image?"] * 4
    one = yes_no_scores(vlm, ims, qs, batch_size=1)
    four = yes_no_scores(vlm, ims, qs, batch_size=4)
    assert one == pytest.approx(four, abs=1e-4)
    # same question, different images: a model that sees the image scores them differently
    assert max(one) - min(one) > 1e-5


def test_blind_model_has_no_image_dependence(tiny_llava_dir, tmp_path):
    from visalign.models import load_vlm

    v = load_vlm(str(tiny_llava_dir))
    v.model.eval()
    recs = _pope_records(tmp_path)
    seeing = image_dependence(v, recs, image_root=str(tmp_path))
    assert seeing["n"] == 6 and 0.0 <= seeing["flipped"] <= 1.0
    assert seeing["score_shift"] > 1e-5  # the blank pass really gets other pixels
    proj = v.model.model.multi_modal_projector
    with torch.no_grad():  # zero image tokens: the answer can only come from the text
        for p in proj.parameters():
            p.zero_()
    blind = image_dependence(v, recs, image_root=str(tmp_path))
    assert blind["real"] == blind["blank"]
    assert blind["gap"] == 0.0 and blind["flipped"] == 0.0
    assert blind["score_shift"] == pytest.approx(0.0, abs=1e-6)
    assert blind["real"]["yes_ratio"] in (0.0, 1.0)  # one question, one answer for every image


def test_image_dependence_needs_questions(vlm):
    with pytest.raises(DataError):
        image_dependence(vlm, [])


def test_pooled_features_one_row_per_image(vlm):
    x = pooled_vision_features(vlm, _images(3), layer=-1)
    y = pooled_vision_features(vlm, _images(3), layer=-2)
    assert x.shape[0] == 3 and x.ndim == 2 and not torch.allclose(x, y)

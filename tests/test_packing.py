"""Padding-free batches (data.packing): the plan, the packed tensors, and that a packed batch
gives the padded batch's loss and gradients on a real tiny LLaVA; the trainer option and its
refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from visalign.data.packing import IGNORE_INDEX, pack_padded_batch, plan_rows
from visalign.io import write_json

COLORS = ["red", "blue", "green", "yellow", "white", "black"]


def test_plan_rows_places_every_sequence_once_within_capacity():
    lengths = [9, 2, 7, 3, 5, 1, 8, 4]
    rows = plan_rows(lengths, 10)
    flat = sorted(i for r in rows for i in r)
    assert flat == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 10 for r in rows)
    assert all(r == sorted(r) for r in rows)          # batch order kept inside a row
    assert len(rows) == 4                               # 39 tokens: 4 rows of 10 is the floor
    assert plan_rows(lengths, 10) == rows               # a pure function of the lengths
    with pytest.raises(ValueError, match="lengths must lie"):
        plan_rows([11], 10)


def _hand_batch():
    ids = torch.tensor([[5, 6, 7, 8, 9, 0], [11, 12, 0, 0, 0, 0], [21, 22, 23, 0, 0, 0]])
    am = (ids != 0).long()
    labels = ids.masked_fill(am == 0, IGNORE_INDEX)
    labels[:, 0] = ids[:, 0]   # a first-token label must not become a cross-sequence target
    pix = torch.arange(3).float().reshape(3, 1, 1, 1).expand(3, 3, 2, 2).clone()
    return {"input_ids": ids, "attention_mask": am, "labels": labels, "pixel_values": pix}


def test_pack_padded_batch_lays_sequences_end_to_end():
    b = _hand_batch()
    p = pack_padded_batch(b, pad_token_id=0)
    assert "attention_mask" not in p and p["use_cache"] is False
    # lengths 5, 2, 3 into rows of 5: [0], [1, 2]
    assert p["input_ids"].tolist() == [[5, 6, 7, 8, 9], [11, 12, 21, 22, 23]]
    assert p["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 0, 1, 2]]
    assert p["labels"].tolist() == [[-100, 6, 7, 8, 9], [-100, 12, -100, 22, 23]]
    # per-sample tensors follow their sequences
    assert p["pixel_values"][:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0]
    # a capacity above the longest sequence packs more per row; the tail is its own segment
    p2 = pack_padded_batch(b, pad_token_id=0, capacity=8)
    assert p2["input_ids"].shape == (2, 8)
    assert p2["input_ids"][0].tolist() == [5, 6, 7, 8, 9, 21, 22, 23]
    assert p2["position_ids"][1].tolist() == [0, 1, 0, 1, 2, 3, 4, 5]
    assert p2["labels"][1, 2:].tolist() == [IGNORE_INDEX] * 6
    assert p2["pixel_values"][:, 0, 0, 0].tolist() == [0.0, 2.0, 1.0]


def test_pack_padded_batch_refuses_what_it_cannot_repack():
    b = _hand_batch()
    left = dict(b, attention_mask=b["attention_mask"].flip(1))
    with pytest.raises(ValueError, match="right padding"):
        pack_padded_batch(left)
    with pytest.raises(ValueError, match="image_grid_thw"):
        pack_padded_batch(dict(b, image_grid_thw=torch.ones(3, 3, dtype=torch.long)))
    with pytest.raises(ValueError, match="labels"):
        pack_padded_batch({k: v for k, v in b.items() if k != "labels"})
    with pytest.raises(ValueError, match="cannot place"):
        pack_padded_batch(dict(b, odd=torch.ones(7)))


@pytest.fixture(scope="module")
def llava_batch(tiny_llava_dir):
    """A real tiny-LLaVA training batch of 6 conversations of very different lengths, each on
    its own solid-colour image."""
    from _tiny import solid_images

    from visalign.models import load_vlm

    vlm = load_vlm(str(tiny_llava_dir))
    ims = solid_images(6)
    convs = []
    for i, c in enumerate(COLORS):
        answer = "Yes." if i % 2 else " ".join([f"It is {c}."] * (1 + 3 * i))
        convs.append([{"from": "human", "value": "<image>\nDescribe the image."},
                      {"from": "gpt", "value": answer}])
    return vlm, vlm.encode(ims, convs)


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
             if p.grad is not None}
    model.zero_grad()
    return loss.detach(), grads


def test_packed_llava_batch_gives_the_padded_loss_and_gradients(llava_batch):
    vlm, batch = llava_batch
    model = vlm.model.train()
    padded_share = 1 - float(batch["attention_mask"].sum()) / batch["attention_mask"].numel()
    assert padded_share > 0.3, "the fixture must hold real padding to test anything"
    packed = pack_padded_batch(batch, vlm.pad_token_id)
    assert packed["input_ids"].shape[0] < batch["input_ids"].shape[0]
    l0, g0 = _loss_and_grads(model, batch)
    l1, g1 = _loss_and_grads(model, packed)
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
    assert g0.keys() == g1.keys() and g0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6, msg=n)
    # the test can fail: images in the wrong order, or attention across sequences, change it
    wrong = dict(packed, pixel_values=packed["pixel_values"].flip(0))
    assert abs(float(_loss_and_grads(model, wrong)[0]) - float(l0)) > 1e-4
    leaky = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1]).expand_as(
        packed["input_ids"]).contiguous())
    assert abs(float(_loss_and_grads(model, leaky)[0]) - float(l0)) > 1e-4


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    from _tiny import solid_images

    root = tmp_path_factory.mktemp("pf_data")
    recs = []
    for i, (im, c) in enumerate(zip(solid_images(6), COLORS)):
        im.save(root / f"{i}.png")
        answer = "No." if i % 2 else " ".join([f"The image is {c}."] * (1 + i))
        recs.append({"id": f"r{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the image?"},
            {"from": "gpt", "value": answer}]})
    write_json(root / "data.json", recs)
    return root


def test_sft_with_padding_free_trains_the_same_weights(tiny_llava_dir, sft_data, tmp_path):
    from safetensors.torch import load_file

    from visalign.methods.sft import SftConfig, train_sft

    def run(out: Path, **kw):
        cfg = SftConfig(model=str(tiny_llava_dir), data=str(sft_data / "data.json"),
                        out=str(out), max_steps=3, batch_size=6, log_every=1, progress=False,
                        lr=1e-3, warmup_ratio=0.0, trainable="full", **kw)
        train_sft(cfg)
        w = {}
        for f in sorted((out / "model").glob("*.safetensors")):
            w.update(load_file(f))
        return w, [json.loads(x)["loss"] for x in (out / "log.jsonl").read_text().splitlines()]

    w0, loss0 = run(tmp_path / "padded")
    w1, loss1 = run(tmp_path / "packed", padding_free=True)
    assert loss1 == pytest.approx(loss0, rel=1e-4)
    assert w0.keys() == w1.keys()
    init = {}
    for f in sorted(Path(tiny_llava_dir).glob("*.safetensors")):
        init.update(load_file(f))
    for k in w0:
        torch.testing.assert_close(w1[k], w0[k], rtol=1e-3, atol=1e-5, msg=k)
    assert sum(not torch.equal(w0[k], init[k]) for k in w0 if k in init) > 0, \
        "the runs must actually train"
    saved = (tmp_path / "packed" / "config.yaml").read_text()
    assert "padding_free: true" in saved


def test_dpo_and_fisao_refuse_padding_free(tmp_path):
    from visalign.methods.dpo import DpoConfig, train_dpo
    from visalign.methods.fisao import FisaoConfig, effective_minibatch

    with pytest.raises(ValueError, match="padding_free"):
        train_dpo(DpoConfig(model="unused", pairs="unused", out=str(tmp_path),
                            padding_free=True))
    with pytest.raises(ValueError, match="padding_free"):
        effective_minibatch(FisaoConfig(padding_free=True))


def test_padding_free_refuses_flash_attention_and_stray_capacity(tiny_llava_dir, sft_data,
                                                                 tmp_path):
    from types import SimpleNamespace

    from visalign.config import ConfigError
    from visalign.data.packing import check_attention, packing_collate
    from visalign.methods.sft import SftConfig, train_sft

    ok = SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa",
                                                text_config=SimpleNamespace(
                                                    _attn_implementation="eager")))
    check_attention(ok)
    flash = SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa",
                                                   text_config=SimpleNamespace(
                                                       _attn_implementation="flash_attention_2")))
    with pytest.raises(ValueError, match="flash_attention_2"):
        check_attention(flash)
    with pytest.raises(ValueError, match=">= 0"):
        packing_collate(lambda items: {}, 0, capacity=-1)
    with pytest.raises(ConfigError, match="padding_free is off"):
        train_sft(SftConfig(model=str(tiny_llava_dir), data=str(sft_data / "data.json"),
                            out=str(tmp_path / "o"), max_steps=1, progress=False,
                            padding_free_capacity=64))

"""The verifier is the policy's own vision tower: configs and weights compared on llava-hf's and
openai's real file formats (sharded fp16 policy vs fp32 CLIP, old-style CLIP config); mismatches
are one-line errors unless overridden; FiSAO's missing inputs are named in one line; the verifier
is found without downloads and scores on the device it is given."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from _tiny import build_openai_clip_dir
from visalign.io import DataError
from visalign.verifier.tower import (VerifierMismatch, check_fisao_inputs, check_vision_tower,
                                     compare_vision_tower, resolve_verifier)


def _one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def test_the_openai_clip_is_the_llava_hf_tower(openai_clip_dir, llava15_hf_dir):
    # The old-style config holds stale defaults in vision_config (patch 32, image 224, hidden
    # 512); only read through vision_config_dict does it match the tower.
    raw = json.loads((openai_clip_dir / "config.json").read_text())
    assert raw["vision_config"]["patch_size"] != raw["vision_config_dict"]["patch_size"]
    for full in (False, True):
        res = compare_vision_tower(openai_clip_dir, llava15_hf_dir, full=full)
        assert res.ok, res.summary()
        # every tower tensor compared: 3 embeddings, pre/post norms, 16 per encoder layer
        assert res.n_tensors == 3 + 2 + 2 + 16 * 3     # the position_ids buffer is not one
        assert res.n_values > 0
    sampled = compare_vision_tower(openai_clip_dir, llava15_hf_dir, sample=64)
    assert sampled.ok and sampled.n_values < res.n_values
    assert check_vision_tower(openai_clip_dir, llava15_hf_dir).ok


def _perturb(clip_dir, name: str, delta: float) -> None:
    f = clip_dir / "model.safetensors"
    state = load_file(str(f))
    state[name] = state[name].clone()
    state[name].view(-1)[0] += delta
    save_file(state, str(f), metadata={"format": "pt"})


def test_a_changed_weight_is_found_and_refused(llava15_hf_dir, tmp_path):
    clip = build_openai_clip_dir(tmp_path)
    name = "vision_model.encoder.layers.1.self_attn.k_proj.weight"
    _perturb(clip, name, 1e-6)          # below fp16 rounding of the fp16 tower: still the tower
    assert compare_vision_tower(clip, llava15_hf_dir, full=True).ok
    _perturb(clip, name, 0.05)
    res = compare_vision_tower(clip, llava15_hf_dir)
    assert not res.ok and not res.config_diffs
    assert len(res.weight_diffs) == 1
    assert "encoder.layers.1.self_attn.k_proj.weight: 1 of" in res.weight_diffs[0]
    with pytest.raises(VerifierMismatch) as e:
        check_vision_tower(clip, llava15_hf_dir)
    msg = _one_line(e)
    assert str(clip) in msg and str(llava15_hf_dir) in msg
    assert "k_proj.weight" in msg and "allow_verifier_mismatch=true" in msg
    with pytest.warns(UserWarning, match="used anyway"):
        res = check_vision_tower(clip, llava15_hf_dir, allow_mismatch=True)
    assert not res.ok


def test_another_clip_is_not_the_tower(llava15_hf_dir, tiny_clip_dir, tmp_path):
    # a CLIP of another shape: the configs differ (the weights are then not compared)
    res = compare_vision_tower(tiny_clip_dir, llava15_hf_dir)
    assert any(d.startswith("patch_size: verifier 8, policy 14") for d in res.config_diffs)
    assert not res.weight_diffs and res.n_tensors == 0
    with pytest.raises(VerifierMismatch) as e:
        check_vision_tower(tiny_clip_dir, llava15_hf_dir)
    assert "patch_size" in _one_line(e)
    # the same shape, other weights (a re-initialised CLIP): every tensor differs
    from transformers import CLIPModel

    clip = build_openai_clip_dir(tmp_path)
    other = CLIPModel.from_pretrained(str(clip))
    torch.manual_seed(123)
    for p in other.vision_model.parameters():
        p.data.normal_(0, 0.02)
    state = {k: v.contiguous() for k, v in other.state_dict().items()}
    save_file(state, str(clip / "model.safetensors"), metadata={"format": "pt"})
    res = compare_vision_tower(clip, llava15_hf_dir)
    assert not res.config_diffs and len(res.weight_diffs) >= 40
    assert "and" in res.summary() and "more" in res.summary()


def test_a_verifier_that_is_not_a_clip(llava15_hf_dir, openai_clip_dir, tiny_qwen2vl_dir):
    # the policy itself is no CLIP verifier, nor is a Qwen2-VL
    res = compare_vision_tower(llava15_hf_dir, llava15_hf_dir)
    assert res.config_diffs == ["the verifier is a llava model, not a CLIP (model_type clip)"]
    res = compare_vision_tower(tiny_qwen2vl_dir, llava15_hf_dir)
    assert res.config_diffs == [("the verifier is a qwen2_vl model, not a CLIP (model_type "
                                 "clip)")]
    # a CLIP against a policy whose tower is no CLIP
    res = compare_vision_tower(openai_clip_dir, tiny_qwen2vl_dir)
    assert res.config_diffs and "vision model type: verifier clip_vision_model" in \
        res.config_diffs[0]
    with pytest.raises(VerifierMismatch):
        check_vision_tower(openai_clip_dir, tiny_qwen2vl_dir)


def test_verifier_checked_in_micro_world_format(tiny_llava_dir, tiny_clip_dir):
    """transformers 5's own save format (vision_tower.* without vision_model) matches too."""
    res = compare_vision_tower(tiny_clip_dir, tiny_llava_dir, full=True)
    assert res.ok, res.summary()


def test_resolve_verifier(llava15_hf_dir, openai_clip_dir, tmp_path):
    assert resolve_verifier(llava15_hf_dir, openai_clip_dir) == openai_clip_dir
    model = tmp_path / "model"
    shutil.copytree(llava15_hf_dir, model)
    with pytest.raises(ValueError) as e:
        resolve_verifier(model)
    msg = _one_line(e)
    assert f"{model}/verifier does not exist" in msg and "--verifier" in msg
    shutil.copytree(openai_clip_dir, model / "verifier")
    assert resolve_verifier(model) == model / "verifier"
    # a hub id: no verifier/ folder, never an OSError traceback, nothing downloaded
    with pytest.raises(ValueError) as e:
        resolve_verifier("llava-hf/llava-1.5-7b-hf")
    msg = _one_line(e)
    assert "--verifier" in msg and "openai/clip-vit-large-patch14-336" in msg
    with pytest.raises(DataError) as e:
        resolve_verifier(model, "nobody-here/not-a-clip")
    msg = _one_line(e)
    assert "nobody-here/not-a-clip" in msg and "--verifier" in msg and "download" in msg
    with pytest.raises(DataError, match="verifier dir not found"):
        resolve_verifier(model, str(tmp_path / "missing"))


def test_fisao_inputs_missing_are_named_in_one_line(llava15_hf_dir, openai_clip_dir, tmp_path):
    calib = tmp_path / "calibration.json"
    calib.write_text("{}")
    assert check_fisao_inputs(str(llava15_hf_dir), str(openai_clip_dir), str(calib)) == \
        openai_clip_dir
    with pytest.raises(ValueError) as e:
        check_fisao_inputs(str(llava15_hf_dir), "", "")
    msg = _one_line(e)
    assert msg.startswith("FiSAO cannot start: ")
    assert "--verifier" in msg and "--calibration is not set" in msg and "--model" not in msg
    with pytest.raises(ValueError) as e:
        check_fisao_inputs("", None, str(tmp_path / "nope.json"), data="")
    msg = _one_line(e)
    for part in ("--model (the policy model dir) is not set", "--verifier: no verifier",
                 f"--calibration {tmp_path / 'nope.json'} does not exist",
                 "--data (the prompt records) is not set"):
        assert part in msg, msg


def test_clip_scorer_device(openai_clip_dir):
    """The openai-format verifier loads (text_config_dict applied) and runs on the device it
    is given; no device means the CPU, as before."""
    from _tiny import solid_images
    from visalign.verifier.scorer import ClipScorer

    cpu = ClipScorer.from_pretrained(openai_clip_dir)
    assert cpu.device == torch.device("cpu")
    assert cpu.model.config.text_config.hidden_size == 32          # from text_config_dict
    auto = ClipScorer.from_pretrained(openai_clip_dir, device="auto")
    assert auto.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    imgs = solid_images(2, 56)
    e_cpu = cpu.image_embeddings(imgs)
    s_cpu = cpu.score(["dog", "car"], e_cpu)
    assert s_cpu.shape == (2, 2) and torch.isfinite(s_cpu).all()
    if torch.cuda.is_available():
        gpu = ClipScorer.from_pretrained(openai_clip_dir, device="cuda")
        e = gpu.image_embeddings(imgs)
        assert e.device.type == "cuda" and next(gpu.model.parameters()).is_cuda
        torch.testing.assert_close(gpu.score(["dog", "car"], e).cpu(), s_cpu, rtol=1e-3,
                                   atol=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ClipScorer.from_pretrained(openai_clip_dir, device="cpu")

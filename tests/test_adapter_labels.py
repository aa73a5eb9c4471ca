"""Label masking keeps every answer token, including lone-space BPE tokens."""

from __future__ import annotations

from PIL import Image


def test_labels_decode_to_the_answers_exactly(tiny_llava_dir):
    from visalign.models import load_vlm

    vlm = load_vlm(str(tiny_llava_dir))
    tok = vlm.processor.tokenizer
    # "zq" and "xv" are not in the tiny vocabulary: BPE emits " " + pieces, whose trimmed
    # offsets are empty; they must still be labelled or the model never learns the space.
    answers = ["There is a zq car.", "No  xv idea"]
    conv = [{"from": "human", "value": "<image>\nWhat is it?"},
            {"from": "gpt", "value": answers[0]},
            {"from": "human", "value": "Why?"}, {"from": "gpt", "value": answers[1]}]
    ids = tok(" zq xv", add_special_tokens=False)["input_ids"]
    assert " " in [tok.decode([i]) for i in ids]  # the case under test really occurs
    b = vlm.encode([Image.new("RGB", (64, 64))], [conv])
    lab = [i for i in b["labels"][0].tolist() if i != -100]
    text = tok.decode(lab)
    assert text.replace(tok.eos_token, "|").split("|")[:2] == [" " + answers[0],
                                                               " " + answers[1]]

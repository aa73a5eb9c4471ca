"""Preference pairs for the DPO baselines (GT-DPO, SeVa, SIMA, POVID) and the pair file.

One module per builder; each returns ``(pairs, stats)`` (stats count what was skipped and why)
from responses it is given:

* :mod:`~visalign.methods.pairs.gt_dpo` — chosen = ground-truth answer, rejected = the model's
  greedy answer (the nSFT paper's GT-DPO baseline);
* :mod:`~visalign.methods.pairs.seva` — SeVa: the model's answer on the image against its
  answer on the diffusion-noised image, and that noise (:func:`diffusion_noise`);
* :mod:`~visalign.methods.pairs.sima` — SIMA: sampled responses ranked by the model itself as
  an in-context critic, best against worst;
* :mod:`~visalign.methods.pairs.povid` — POVID: the ground truth against itself with an
  injected hallucination (stage 1) and against the answer on a noised image (stage 2).

:mod:`~visalign.methods.pairs.build` generates those responses with a model and calls the
builder (:func:`build_method_pairs`, what ``visalign pairs <method>`` runs);
:mod:`~visalign.methods.pairs.common` holds the pair file format (:func:`load_pairs`,
:func:`write_pairs`, :func:`validate_pairs`), :class:`PairsConfig` and the builders' shared
helpers. Train a pair file with ``visalign train dpo --pairs FILE``.
"""

from visalign.methods.pairs.build import (PairModel, build_method_pairs, check_inputs,
                                          noise_tag, noised_records, read_samples,
                                          write_method_pairs)
from visalign.methods.pairs.common import (METHODS, PairsConfig, load_pairs, normalize_response,
                                           validate_pairs, write_pairs)
from visalign.methods.pairs.gt_dpo import build_gt_dpo_pairs
from visalign.methods.pairs.povid import (POVID_PROMPT, TextEdit, attribute_edit,
                                          build_povid_pairs, object_edit, povid_llm_edit,
                                          relation_edit, rule_edit)
from visalign.methods.pairs.seva import (CLIP_MEAN, CLIP_STD, SEVA_NOISE_STEP, alpha_bar, betas,
                                         build_seva_pairs, diffusion_noise, linear_betas,
                                         sigmoid_betas)
from visalign.methods.pairs.sima import (SIMA_CRITIC_PROMPT, SimaRanker, SimaRankError,
                                         build_sima_pairs, parse_critic_choice)

__all__ = [
    "METHODS", "PairsConfig", "load_pairs", "validate_pairs", "write_pairs",
    "normalize_response", "build_gt_dpo_pairs", "build_seva_pairs", "build_sima_pairs",
    "build_povid_pairs", "SimaRanker", "SimaRankError", "SIMA_CRITIC_PROMPT", "POVID_PROMPT",
    "parse_critic_choice", "TextEdit", "object_edit", "attribute_edit", "relation_edit",
    "rule_edit", "povid_llm_edit", "diffusion_noise", "alpha_bar", "betas", "linear_betas",
    "sigmoid_betas", "SEVA_NOISE_STEP", "CLIP_MEAN", "CLIP_STD", "PairModel",
    "build_method_pairs", "check_inputs", "noised_records", "noise_tag", "read_samples",
    "write_method_pairs",
]

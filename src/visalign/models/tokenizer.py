"""A small byte-level BPE tokenizer trained locally, with a LLaVA-1.5 chat template.

The micro-world models have no hub tokenizer to borrow, so one is trained here with the
``tokenizers`` library and wrapped as a ``transformers`` fast tokenizer (char offsets via
``return_offsets_mapping``, ``save_pretrained``/``from_pretrained``, ``apply_chat_template``).
Byte-level BPE never produces ``<unk>``, and a vocabulary of ~1000 is enough for the
micro-world's English to be mostly one token per word.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD, UNK, IMAGE = "<s>", "</s>", "<pad>", "<unk>", "<image>"
DEFAULT_SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, PAD, UNK, IMAGE)

# LLaVA-1.5 ("v1") conversation format: "USER: <image>\n{q} ASSISTANT: {a}</s>USER: {q2} ..."
# Content may be a plain string or a list of {"type": "image"} / {"type": "text"} items (the
# form `transformers` processors and real-model templates use); images are rendered first, as
# LLaVA's preprocessing does. `{% generation %}` marks assistant text so that
# `return_assistant_tokens_mask=True` works too; visalign's own label masking does not need it.
LLAVA_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set ns = namespace(images='', text=message['content']) -%}"
    "{%- else -%}"
    "{%- set ns = namespace(images='', text='') -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{%- set ns.images = ns.images + '<image>\\n' -%}"
    "{%- elif item['type'] == 'text' -%}{%- set ns.text = ns.text + item['text'] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{- ns.text + ' ' -}}"
    "{%- elif message['role'] == 'user' -%}"
    "{{- 'USER: ' + ns.images + ns.text + ' ' -}}"
    "{%- else -%}"
    "{{- 'ASSISTANT: ' -}}{% generation %}{{- ns.images + ns.text + '</s>' -}}{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int, *,
                    special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
                    chat_template: str = LLAVA_CHAT_TEMPLATE,
                    model_max_length: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for ``transformers``.

    ``special_tokens`` must include ``<s>``, ``</s>``, ``<pad>``, ``<unk>`` and ``<image>``;
    they are never split. Encoding prepends ``<s>`` (as Llama tokenizers do); the chat template
    does not, so rendered prompts get exactly one BOS. Offsets are trimmed to the word (the
    leading space of ``" red"`` is not part of its span).
    """
    special_tokens = list(dict.fromkeys(special_tokens))
    missing = [t for t in DEFAULT_SPECIAL_TOKENS if t not in special_tokens]
    if missing:
        raise ValueError(f"special_tokens lacks {missing}")
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=True),
        processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                      special_tokens=[(BOS, bos_id)]),
    ])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        extra_special_tokens=[t for t in special_tokens if t not in (BOS, EOS, PAD, UNK)],
        model_max_length=model_max_length, clean_up_tokenization_spaces=False,
        padding_side="right")
    fast.chat_template = chat_template
    return fast

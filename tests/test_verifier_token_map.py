"""Entity char spans -> reward tokens, with a real byte-level BPE tokenizer trained here."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from visalign.verifier.entities import EntitySet
from visalign.verifier.token_map import decode_with_offsets, map_spans_to_tokens

TEXT = "Two cups, a skateboard and bikes near the traffic light in a café."
# The corpus makes " cup", " light" whole tokens but leaves "cups", "skateboard", "bikes",
# "traffic" and "café" split (min_frequency=2 forbids merges seen once).
CORPUS = ["a cup on the table", "the dog and the cat", "a red cup", "the table is red",
          "a traffic light", "the light is on", "a bike on the road",
          "a skate and a board"] * 20 + ["two cups", "bikes", "a café"]


def _bpe(trim_offsets: bool) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, min_frequency=2, special_tokens=["</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    if trim_offsets:
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
    return tok


@pytest.fixture(scope="module")
def entities():
    return EntitySet.build(extra=[["cup"], ["skateboard"], ["bicycle", "bike"],
                                  ["traffic light"], ["light"], ["café"]],
                           synonyms=None, nouns=False, wordnet=False)


def _mapped(tokens, offsets, mentions, position):
    idx = map_spans_to_tokens(offsets, [(m.start, m.end) for m in mentions], position)
    return [[tokens[i] for i in ix] for ix in idx]


@pytest.mark.parametrize("trim", [False, True])
def test_real_bpe_plural_synonym_multitoken_two_word(entities, trim):
    enc = _bpe(trim).encode(TEXT)
    mentions = entities.find(TEXT)
    assert [(m.surface, m.canonical) for m in mentions] == [
        ("cups", "cup"), ("skateboard", "skateboard"), ("bikes", "bicycle"),
        ("traffic light", "traffic light"), ("café", "café")]
    # without trimming, " cup" starts on the space before "cups"; with it, it does not
    assert enc.offsets[enc.tokens.index("Ġcup")] == ((3, 7) if not trim else (4, 7))
    every = _mapped(enc.tokens, enc.offsets, mentions, "all")
    assert every == [
        ["Ġcup", "s"],                         # plural suffix token
        ["Ġskat", "e", "b", "oa", "rd"],       # one word, five tokens
        ["Ġb", "ike", "s"],                    # synonym (-> bicycle), plural, multi-token
        ["Ġtraf", "fi", "c", "Ġlight"],        # two-word entity
        ["Ġc", "af", "Ã", "©"],                # é is two byte-level tokens
    ]
    # default: the reward sits on the token that completes the word
    assert _mapped(enc.tokens, enc.offsets, mentions, "last") == [[t[-1]] for t in every]
    assert _mapped(enc.tokens, enc.offsets, mentions, "first") == [[t[0]] for t in every]


def test_straddling_special_and_empty():
    # "cups." with a token "s." straddling the span end; a special token at (0, 0); None
    offsets = [(0, 0), (0, 3), (3, 5), None, (5, 5)]
    assert map_spans_to_tokens(offsets, [(0, 4)]) == [[2]]
    assert map_spans_to_tokens(offsets, [(0, 4)], "all") == [[1, 2]]
    # a bare space token before the span is not part of it: " " (3,4) then "cup" (4,7)
    assert map_spans_to_tokens([(3, 4), (4, 7)], [(4, 7)], "all") == [[1]]
    # one token covering two spans is listed for both
    assert map_spans_to_tokens([(0, 9)], [(0, 3), (4, 9)]) == [[0], [0]]
    assert map_spans_to_tokens([(0, 3)], [(10, 12)]) == [[]]         # truncated response
    with pytest.raises(ValueError):
        map_spans_to_tokens([(0, 3)], [(0, 3)], position="middle")
    with pytest.raises(ValueError):
        map_spans_to_tokens([(0, 3)], [(3, 3)])


def test_decode_with_offsets_of_generated_ids(entities):
    from transformers import PreTrainedTokenizerFast

    tok = _bpe(False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")
    ids = tok.encode(TEXT).ids + [fast.eos_token_id]
    tokens = fast.convert_ids_to_tokens(ids)
    text, offsets = decode_with_offsets(fast, ids)
    assert text == TEXT and len(offsets) == len(ids)
    # contiguous, monotone, covering the text; EOS (skipped) is zero-width at the end
    assert offsets[0][0] == 0 and offsets[-1] == (len(TEXT), len(TEXT))
    assert all(a[1] == b[0] for a, b in zip(offsets, offsets[1:]))
    # the first byte of "é" decodes to nothing yet; the second completes it
    i = tokens.index("Ã")
    assert offsets[i] == (64, 64) and offsets[i + 1] == (64, 65)
    mapped = _mapped(tokens, offsets, entities.find(text), "last")
    assert mapped == [["s"], ["rd"], ["s"], ["Ġlight"], ["©"]]

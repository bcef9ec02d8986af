"""Word grouping works for SentencePiece-, byte-level- and word-level tokenizers alike."""

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from engine.demo.architecture import build_tokenizer
from engine.tokens import word_ids


def _bpe(pre_tokenizer, decoder, words):
    vocab = {}
    for piece in words:
        vocab.setdefault(piece, len(vocab))
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=words[0]))
    core.pre_tokenizer, core.decoder = pre_tokenizer, decoder
    return PreTrainedTokenizerFast(tokenizer_object=core)


def _groups(tokenizer, pieces):
    ids = tokenizer.convert_tokens_to_ids(pieces)
    return word_ids(tokenizer, ids).tolist()


def test_sentencepiece_style_markers():
    pieces = ["<unk>", "▁The", "▁sh", "irt", "▁is", "▁yellow", "."]
    tokenizer = _bpe(pre_tokenizers.Metaspace(), decoders.Metaspace(), pieces)
    assert _groups(tokenizer, pieces[1:]) == [0, 1, 1, 2, 3, 4]


def test_byte_level_markers():
    pieces = ["<unk>", "The", "Ġsh", "irt", "Ġis", "Ġyel", "low", "!"]
    tokenizer = _bpe(pre_tokenizers.ByteLevel(), decoders.ByteLevel(), pieces)
    assert _groups(tokenizer, pieces[1:]) == [0, 1, 1, 2, 3, 3, 4]


def test_word_level_demo_tokenizer():
    tokenizer = build_tokenizer()
    ids = tokenizer("What color is the circle?", add_special_tokens=False)["input_ids"]
    assert word_ids(tokenizer, ids).tolist() == [0, 1, 2, 3, 4, 5]

"""Tests for genspace.data.text: id conventions, tokenizer round trips, packing/padding, corpora."""

from __future__ import annotations

import json

import pytest
import torch

from genspace.data.text import (
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    TokenData,
    encode_prompt,
    get_tokenizer,
    load_hf_dataset,
    load_text_files,
    load_tokenizer,
    pack_sequences,
    pad_sequences,
    prompt_canvas,
    tokenize_corpus,
)

TEXT = "Héllo wörld! The cat sat on the mat. 猫 😀\nSecond line, with <|eos|> written out."
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "the cat sat on the mat and the dog sat on the log",
    "héllo wörld, naïve café",
] * 10


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(CORPUS, vocab_size=300, min_frequency=2)


def check_layout(tok):
    s = tok.n_symbols
    assert (tok.eos_id, tok.pad_id, tok.mask_id) == (s, s + 1, s + 2)
    assert tok.n_data_tokens == s + 2 and tok.vocab_size == s + 3 and tok.bos_id is None


# ------------------------------------------------------------------------------ tokenizers
def test_byte_tokenizer_layout_and_round_trip():
    tok = ByteTokenizer()
    check_layout(tok)
    assert (tok.n_symbols, tok.vocab_size) == (256, 259)
    ids = tok.encode(TEXT)
    assert ids == list(TEXT.encode("utf-8")) and max(ids) < 256
    assert tok.decode(ids) == TEXT
    assert tok.decode(torch.tensor(ids)) == TEXT


def test_decode_specials():
    tok = ByteTokenizer()
    ids = tok.encode("ab") + [tok.mask_id, tok.mask_id] + tok.encode("c") + [tok.eos_id, tok.pad_id, tok.pad_id]
    assert tok.decode(ids) == "ab__c<|eos|>"
    assert tok.decode(ids, mask_text="[MASK]", eos_text="") == "ab[MASK][MASK]c"
    with pytest.raises(ValueError, match="259 at position 1"):
        tok.decode([97, 259])


def test_char_tokenizer(tmp_path):
    tok = CharTokenizer.fit(["hello", "world"])
    check_layout(tok)
    assert tok.chars == tuple(sorted(set("helloworld")))
    assert tok.decode(tok.encode("low hello"[:3])) == "low"
    with pytest.raises(ValueError, match=r"'z'.*position 3"):
        tok.encode("helz")
    path = tmp_path / "vocab.json"
    tok.save(path)
    assert json.loads(path.read_text()) == {"type": "char", "chars": list(tok.chars)}
    again = CharTokenizer.load(path)
    assert again.chars == tok.chars and again.encode("world") == tok.encode("world")
    assert get_tokenizer(f"char:{path}").chars == tok.chars
    assert load_tokenizer(path).chars == tok.chars
    with pytest.raises(ValueError, match="duplicate"):
        CharTokenizer(["a", "b", "a"])
    with pytest.raises(ValueError, match="single character"):
        CharTokenizer(["ab"])


def test_bpe_layout_and_round_trip(bpe, tmp_path):
    check_layout(bpe)
    assert 256 < bpe.n_symbols and bpe.vocab_size <= 300
    ids = bpe.encode(TEXT)  # unseen characters still encode (byte level)
    assert max(ids) < bpe.n_symbols  # the literal "<|eos|>" in the text is text, not the EOS id
    assert bpe.decode(ids) == TEXT
    assert len(bpe.encode(CORPUS[0])) < len(CORPUS[0])  # merges were learned
    assert bpe.encode_batch([TEXT, CORPUS[1]]) == [ids, bpe.encode(CORPUS[1])]
    assert bpe.decode(bpe.encode("the cat") + [bpe.mask_id, bpe.eos_id, bpe.pad_id]) == "the cat_<|eos|>"
    bpe.save(tmp_path)
    for again in (BPETokenizer.load(tmp_path / "tokenizer.json"), get_tokenizer(f"bpe:{tmp_path}"), load_tokenizer(tmp_path)):
        assert isinstance(again, BPETokenizer)
        assert again.vocab_size == bpe.vocab_size and again.encode(TEXT) == ids


def test_bpe_train_from_files_and_special_layout_check(tmp_path):
    import tokenizers

    f = tmp_path / "a.txt"
    f.write_text("\n".join(CORPUS), encoding="utf-8")
    tok = BPETokenizer.train([f], vocab_size=280)
    check_layout(tok)
    assert tok.decode(tok.encode(CORPUS[2])) == CORPUS[2]
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        BPETokenizer.train([tmp_path / "missing.txt"], vocab_size=280)
    with pytest.raises(ValueError, match="259"):
        BPETokenizer.train(CORPUS, vocab_size=100)
    # specials placed first (HF's trainer default) break the convention and are refused
    hf = tokenizers.Tokenizer(tokenizers.models.BPE())
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=270, special_tokens=["<|eos|>", "<|pad|>", "<|mask|>"], show_progress=False)
    hf.train_from_iterator(CORPUS, trainer)
    with pytest.raises(ValueError, match="last three ids"):
        BPETokenizer(hf)


def test_get_tokenizer_specs():
    assert isinstance(get_tokenizer("byte"), ByteTokenizer)
    assert get_tokenizer("char", texts=["abc", "cd"]).chars == ("a", "b", "c", "d")
    with pytest.raises(ValueError, match="texts"):
        get_tokenizer("char")
    with pytest.raises(ValueError, match="unknown tokenizer"):
        get_tokenizer("gpt2")


# ------------------------------------------------------------------------ pack and pad
def test_pack_sequences_by_hand():
    docs = [[1, 2], [3], [], [4, 5, 6]]
    rows = pack_sequences(docs, 3, eos_id=9)  # stream 1 2 9 3 9 4 5 6 9
    assert rows.tolist() == [[1, 2, 9], [3, 9, 4], [5, 6, 9]] and rows.dtype == torch.int64
    assert pack_sequences(docs, 4, eos_id=9).tolist() == [[1, 2, 9, 3], [9, 4, 5, 6]]  # last partial row dropped
    assert pack_sequences(docs, 3, eos_id=None).tolist() == [[1, 2, 3], [4, 5, 6]]
    with pytest.raises(ValueError, match="fewer than one row"):
        pack_sequences(docs, 10, eos_id=9)


def test_pad_sequences_by_hand():
    tokens, valid = pad_sequences([[1, 2], [], [3, 4, 5, 6, 7]], 4, pad_id=8, eos_id=9)
    assert tokens.tolist() == [[1, 2, 9, 8], [3, 4, 5, 6], [7, 9, 8, 8]]
    assert valid.tolist() == [[True, True, True, False], [True] * 4, [True, True, False, False]]
    assert valid.dtype == torch.bool


def test_tokenize_corpus_modes():
    tok = CharTokenizer.fit(["abc"])
    packed = tokenize_corpus(["ab", "c", "abc"], tok, 3, mode="pack")
    assert isinstance(packed, TokenData) and packed.valid is None
    assert packed.tokens.tolist() == [[0, 1, 3], [2, 3, 0], [1, 2, 3]]  # a b EOS | c EOS a | b c EOS
    assert (packed.vocab_size, packed.mask_id, packed.n_data_tokens, len(packed), packed.length) == (6, 5, 5, 3, 3)
    padded = tokenize_corpus(["ab", "c"], tok, 4, mode="pad")
    assert padded.tokens.tolist() == [[0, 1, 3, 4], [2, 3, 4, 4]]
    assert padded.valid.tolist() == [[True, True, True, False], [True, True, False, False]]
    assert tok.decode(padded.tokens[0]) == "ab<|eos|>"
    with pytest.raises(ValueError, match="mode"):
        tokenize_corpus(["ab"], tok, 4, mode="wrap")


def test_prompt_helpers():
    tok = CharTokenizer.fit("abc")
    ids = encode_prompt(tok, "cab", 5)
    assert ids.tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match="3 tokens, longer than the context length 2"):
        encode_prompt(tok, "cab", 2)
    with pytest.raises(ValueError, match="'x'"):
        encode_prompt(tok, "abx", 5)
    x, keep = prompt_canvas(ids, 2, 5, tok.mask_id)
    assert x.tolist() == [[2, 0, 1, 5, 5]] * 2
    assert keep.tolist() == [[True, True, True, False, False]] * 2


# ---------------------------------------------------------------------------- corpora
def test_load_text_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("first para\nline two\n\n\nsecond para\n", encoding="utf-8")
    (tmp_path / "sub" / "b.txt").write_text("other file", encoding="utf-8")
    (tmp_path / "blank.txt").write_text("  \n\n", encoding="utf-8")
    assert load_text_files(tmp_path / "a.txt") == ["first para\nline two\n\n\nsecond para\n"]
    assert load_text_files(tmp_path / "a.txt", split="paragraph") == ["first para\nline two", "second para"]
    assert load_text_files(str(tmp_path / "**" / "*.txt")) == ["first para\nline two\n\n\nsecond para\n", "other file"]
    assert load_text_files(tmp_path) == load_text_files([tmp_path / "a.txt", tmp_path / "sub" / "b.txt"])
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_text_files(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="pattern"):
        load_text_files(str(tmp_path / "*.md"))
    with pytest.raises(ValueError, match="empty corpus"):
        load_text_files(tmp_path / "blank.txt")
    with pytest.raises(ValueError, match="split"):
        load_text_files(tmp_path, split="line")


def test_load_hf_dataset(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["one doc", " ", "two doc"], "n": [1, 2, 3]}).save_to_disk(str(tmp_path / "ds"))
    assert load_hf_dataset(tmp_path / "ds") == ["one doc", "two doc"]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": ["a"]}), "test": datasets.Dataset.from_dict({"body": ["b"]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert load_hf_dataset(tmp_path / "dd", split="test", text_field="body") == ["b"]
    with pytest.raises(ValueError, match="split 'valid'"):
        load_hf_dataset(tmp_path / "dd", split="valid", text_field="body")
    with pytest.raises(ValueError, match="columns"):
        load_hf_dataset(tmp_path / "ds", text_field="content")
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "x y"}\n{"text": "z"}\n', encoding="utf-8")
    assert load_hf_dataset(jsonl, cache_dir=tmp_path / "cache") == ["x y", "z"]
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_hf_dataset("openwebtext")

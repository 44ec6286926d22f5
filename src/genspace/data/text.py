"""Text for discrete generative models: tokenizers, corpora, packing and padding.

Token-id conventions (shared by every tokenizer here and every source of
:mod:`genspace.data.sources`)
-------------------------------------------------------------------------------------------
=====================  ===================================================================
``n_symbols``          S: ids ``0 .. S−1`` are text symbols (bytes, characters, BPE pieces)
``eos_id``             ``S`` (tokenizers; ``None`` for synthetic sources)
``pad_id``             ``S + 1`` (tokenizers; ``None`` for synthetic sources)
``bos_id``             ``None`` everywhere (no tokenizer here uses a BOS token)
``n_data_tokens``      K: every id that can occur in a CLEAN training sequence is in ``0 .. K−1``
                       (symbols, then EOS and PAD). This is the number of classes a denoiser
                       predicts and the ``vocab_size`` argument of
                       :class:`~genspace.discrete.processes.AbsorbingProcess`.
``mask_id``            always ``K`` = ``vocab_size − 1``: the absorbing token of masked diffusion,
                       never in clean data
``vocab_size``         ``K + 1``: the embedding size of a model
=====================  ===================================================================

So the ids are: text symbols, then EOS, then PAD (these are the "data ids" ``0 .. K−1``), then the
mask, last. EOS and PAD are data ids because they occur in clean training sequences and the model
must predict them (as GPT-2's ``<|endoftext|>`` in MDLM/SEDD).

``decode(ids, *, mask_text="_", eos_text="<|eos|>")`` skips PAD, shows the mask as ``mask_text``
(one visible character by default, so a half-denoised character-level sequence keeps its
alignment) and EOS as ``eos_text``; ids outside ``0 .. vocab_size−1`` raise ``ValueError``.

Training sequences of fixed length L
------------------------------------
- **pack** (:func:`pack_sequences`; nanoGPT, MDLM "wrap"): every document is followed by EOS, all of
  them are concatenated and the stream is cut into rows of L tokens. A row may start inside a
  document and hold several; no token is padding; the trailing partial row is dropped.
- **pad** (:func:`pad_sequences`): one document per row, followed by EOS, then PAD up to L, with a
  ``valid`` mask (True on document tokens and EOS, False on PAD) for the loss. A document longer
  than L − 1 tokens continues on the next rows (nothing is dropped); EOS ends its last row.

Tokenizers
----------
- :class:`ByteTokenizer`: UTF-8 bytes (S = 256, EOS 256, PAD 257, mask 258, vocab_size 259).
- :class:`CharTokenizer`: characters seen when fitting; an unknown character raises ``ValueError``
  naming it and its position (no silent UNK). Saved as JSON.
- :class:`BPETokenizer`: byte-level BPE trained locally with HF ``tokenizers`` (optional
  dependency: ``pip install genspace[text]``), saved as HF ``tokenizer.json``. The three specials
  ``<|eos|>``, ``<|pad|>``, ``<|mask|>`` are added AFTER training, so they get the last three ids
  and the convention above holds. Literal special-token strings inside a text are encoded as plain
  text, never as the special ids.

Corpora: :func:`load_text_files` (one document per file, or per blank-line-separated paragraph),
:func:`load_hf_dataset` (local HF ``datasets`` folders and files only, never a download),
:func:`tokenize_corpus` (→ :class:`TokenData`, what the trainer gets), :func:`encode_prompt` and
:func:`prompt_canvas` for conditional sampling.
"""

from __future__ import annotations

import glob as _glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import torch

__all__ = [
    "ByteTokenizer",
    "CharTokenizer",
    "BPETokenizer",
    "get_tokenizer",
    "load_tokenizer",
    "pack_sequences",
    "pad_sequences",
    "TokenData",
    "tokenize_corpus",
    "load_text_files",
    "load_hf_dataset",
    "encode_prompt",
    "prompt_canvas",
]

PathLike = Union[str, os.PathLike]

_TEXT_EXTRA = "pip install genspace[text]"


# ---------------------------------------------------------------------------------- tokenizers
class _Tokenizer:
    """Shared id layout: symbols 0..S−1, EOS = S, PAD = S + 1, mask = S + 2 (last)."""

    n_symbols: int
    bos_id: Optional[int] = None

    @property
    def eos_id(self) -> int:
        return self.n_symbols

    @property
    def pad_id(self) -> int:
        return self.n_symbols + 1

    @property
    def n_data_tokens(self) -> int:
        """K: ids 0..K−1 can occur in clean sequences (symbols, EOS, PAD)."""
        return self.n_symbols + 2

    @property
    def mask_id(self) -> int:
        return self.n_symbols + 2

    @property
    def vocab_size(self) -> int:
        return self.n_symbols + 3

    def encode(self, text: str) -> list[int]:  # pragma: no cover - overridden
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``[encode(t) for t in texts]`` (the BPE tokenizer does it in parallel)."""
        return [self.encode(t) for t in texts]

    def _decode_symbols(self, ids: list[int]) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def decode(self, ids, *, mask_text: str = "_", eos_text: str = "<|eos|>") -> str:
        """Text of ``ids`` (a sequence of ints or a 1-D tensor): PAD skipped, mask shown as
        ``mask_text``, EOS as ``eos_text``."""
        if isinstance(ids, torch.Tensor):
            if ids.ndim != 1:
                raise ValueError(f"decode expects one sequence (1-D ids), got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        pieces: list[str] = []
        run: list[int] = []
        for pos, i in enumerate(ids):
            i = int(i)
            if 0 <= i < self.n_symbols:
                run.append(i)
                continue
            if run:
                pieces.append(self._decode_symbols(run))
                run = []
            if i == self.eos_id:
                pieces.append(eos_text)
            elif i == self.mask_id:
                pieces.append(mask_text)
            elif i != self.pad_id:
                raise ValueError(f"token id {i} at position {pos} is outside the vocabulary 0..{self.vocab_size - 1}")
        if run:
            pieces.append(self._decode_symbols(run))
        return "".join(pieces)


class ByteTokenizer(_Tokenizer):
    """UTF-8 bytes as tokens: symbols 0..255, EOS 256, PAD 257, mask 258 (vocab_size 259).

    Decoding replaces an invalid UTF-8 byte sequence (a sample cut inside a character) with U+FFFD.
    """

    n_symbols = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def _decode_symbols(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def save(self, path: PathLike) -> None:
        """Write ``{"type": "byte"}`` (so that :func:`load_tokenizer` can rebuild it)."""
        _write_json(path, {"type": "byte"})

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class CharTokenizer(_Tokenizer):
    """One token per character: symbol i is ``chars[i]``; EOS, PAD, mask follow.

    Args:
        chars: the vocabulary, distinct single characters, in id order.

    Build it with :meth:`fit` from the training text, or :meth:`load` from a saved JSON
    (``{"type": "char", "chars": [...]}``).
    """

    def __init__(self, chars: Sequence[str]) -> None:
        chars = list(chars)
        if not chars:
            raise ValueError("CharTokenizer needs at least one character, got an empty vocabulary")
        for i, c in enumerate(chars):
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"CharTokenizer vocabulary entry {i} must be a single character, got {c!r}")
        if len(set(chars)) != len(chars):
            dup = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"CharTokenizer vocabulary has duplicate characters {dup!r}")
        self.chars = tuple(chars)
        self.n_symbols = len(chars)
        self._index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def fit(cls, texts: Union[str, Iterable[str]]) -> "CharTokenizer":
        """The sorted set of characters of ``texts`` (a string or an iterable of strings)."""
        if isinstance(texts, str):
            texts = [texts]
        seen: set[str] = set()
        for t in texts:
            seen.update(t)
        if not seen:
            raise ValueError("CharTokenizer.fit: empty corpus (no characters)")
        return cls(sorted(seen))

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of ``text``; an unknown character raises ``ValueError``."""
        index = self._index
        try:
            return [index[c] for c in text]
        except KeyError:
            for pos, c in enumerate(text):
                if c not in index:
                    raise ValueError(
                        f"character {c!r} (U+{ord(c):04X}) at position {pos} is not in the "
                        f"vocabulary of {self.n_symbols} characters"
                    ) from None
            raise  # pragma: no cover

    def _decode_symbols(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def save(self, path: PathLike) -> None:
        """JSON ``{"type": "char", "chars": [...]}``."""
        _write_json(path, {"type": "char", "chars": list(self.chars)})

    @classmethod
    def load(cls, path: PathLike) -> "CharTokenizer":
        obj = _read_json(path)
        if obj.get("type") != "char" or not isinstance(obj.get("chars"), list):
            raise ValueError(f"{path}: not a saved CharTokenizer (expected {{'type': 'char', 'chars': [...]}})")
        return cls(obj["chars"])

    def __repr__(self) -> str:
        return f"CharTokenizer(n_symbols={self.n_symbols})"


class BPETokenizer(_Tokenizer):
    """Byte-level BPE (HF ``tokenizers``) with the specials appended last: ``<|eos|>``,
    ``<|pad|>``, ``<|mask|>`` get ids S, S + 1, S + 2.

    Build it with :meth:`train` or :meth:`load`. Wrapping a ``tokenizers.Tokenizer`` directly
    (e.g. a local GPT-2 ``tokenizer.json``) appends the three specials if it has none of them; if
    it has them they must already be its last three ids, in that order.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` (this object takes ownership: it sets
            ``encode_special_tokens = True`` so that special-token strings in a text stay text).
    """

    EOS = "<|eos|>"
    PAD = "<|pad|>"
    MASK = "<|mask|>"

    def __init__(self, tokenizer: Any) -> None:
        specials = [self.EOS, self.PAD, self.MASK]
        ids = [tokenizer.token_to_id(s) for s in specials]
        if all(i is None for i in ids):
            tokenizer.add_special_tokens(specials)
            ids = [tokenizer.token_to_id(s) for s in specials]
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        if ids != [size - 3, size - 2, size - 1]:
            raise ValueError(
                f"BPETokenizer needs the specials {specials} as the last three ids "
                f"{[size - 3, size - 2, size - 1]}, got ids {ids}; train with BPETokenizer.train"
            )
        if sorted(tokenizer.get_vocab(with_added_tokens=True).values()) != list(range(size)):
            raise ValueError(f"BPETokenizer needs contiguous token ids 0..{size - 1}; this tokenizer.json has gaps")
        tokenizer.encode_special_tokens = True
        self._tok = tokenizer
        self.n_symbols = size - 3

    @classmethod
    def train(
        cls,
        texts_or_files: Union[PathLike, Iterable[Union[str, os.PathLike]]],
        *,
        vocab_size: int = 1024,
        min_frequency: int = 2,
    ) -> "BPETokenizer":
        """Train a byte-level BPE locally.

        Args:
            texts_or_files: a ``pathlib.Path`` or a list of ``Path`` objects (files to read), or an
                iterable of ``str`` (the texts themselves). A plain ``str`` is always a text, never
                a path: load files with :func:`load_text_files` or pass ``Path`` objects.
            vocab_size: the total vocabulary size including the 3 specials, an upper bound (a small
                corpus runs out of merges earlier); at least 256 + 3 (the byte alphabet).
            min_frequency: a pair is merged only if it occurs at least this often.
        """
        tokenizers = _import_tokenizers()
        if vocab_size < 259:
            raise ValueError(f"BPE vocab_size must be >= 259 (256 byte symbols + 3 specials), got {vocab_size}")
        if min_frequency < 1:
            raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
        tok = tokenizers.Tokenizer(tokenizers.models.BPE())
        tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tokenizers.decoders.ByteLevel()
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=vocab_size - 3,
            min_frequency=min_frequency,
            initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,
        )
        items = [texts_or_files] if isinstance(texts_or_files, (str, os.PathLike)) else list(texts_or_files)
        if not items:
            raise ValueError("BPETokenizer.train: empty corpus (no texts or files)")
        if all(isinstance(x, os.PathLike) for x in items):
            files = [str(x) for x in items]
            for f in files:
                if not os.path.isfile(f):
                    raise FileNotFoundError(f"BPE training file not found: {f}")
            tok.train(files, trainer)
        elif all(isinstance(x, str) for x in items):
            if not any(x.strip() for x in items):
                raise ValueError("BPETokenizer.train: empty corpus (only whitespace)")
            tok.train_from_iterator(items, trainer)
        else:
            raise ValueError("BPETokenizer.train expects Path objects (files) or str (texts), not a mix")
        return cls(tok)

    @classmethod
    def load(cls, path: PathLike) -> "BPETokenizer":
        """From an HF ``tokenizer.json`` file, or a folder holding one."""
        tokenizers = _import_tokenizers()
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        return cls(tokenizers.Tokenizer.from_file(str(path)))

    def save(self, path: PathLike) -> None:
        """Write the HF ``tokenizer.json`` (to ``path``, or ``path/tokenizer.json`` for a folder)."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(path))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def _decode_symbols(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"BPETokenizer(n_symbols={self.n_symbols})"


def _import_tokenizers():
    try:
        import tokenizers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"the BPE tokenizer needs the 'tokenizers' package: {_TEXT_EXTRA}") from e
    return tokenizers


def _write_json(path: PathLike, obj: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")


def _read_json(path: PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def load_tokenizer(path: PathLike):
    """A saved tokenizer, by its content: ``{"type": "byte"}``, ``{"type": "char", ...}``, or an
    HF ``tokenizer.json`` (BPE); a folder means ``folder/tokenizer.json``."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    obj = _read_json(path)
    kind = obj.get("type")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        return CharTokenizer.load(path)
    if "model" in obj:
        return BPETokenizer.load(path)
    raise ValueError(f"{path}: not a saved genspace tokenizer (type byte/char) nor an HF tokenizer.json")


def get_tokenizer(name: str, *, texts: Optional[Iterable[str]] = None, vocab_size: int = 1024):
    """A tokenizer from a short spec.

    ==================  ==========================================================
    ``"byte"``          :class:`ByteTokenizer`
    ``"char"``          :meth:`CharTokenizer.fit` on ``texts`` (required)
    ``"char:<path>"``   :meth:`CharTokenizer.load` from a saved JSON
    ``"bpe"``           :meth:`BPETokenizer.train` on ``texts`` with ``vocab_size``
    ``"bpe:<path>"``    :meth:`BPETokenizer.load` from a ``tokenizer.json``
    ``<path>``          :func:`load_tokenizer` (any saved tokenizer; a file or folder)
    ==================  ==========================================================
    """
    if not isinstance(name, str):
        raise ValueError(f"tokenizer spec must be a string, got {name!r}")
    if name == "byte":
        return ByteTokenizer()
    if name in ("char", "bpe"):
        if texts is None:
            raise ValueError(f"tokenizer {name!r} is fitted on a corpus: pass texts=... (or use '{name}:<path>')")
        texts = list(texts)
        return CharTokenizer.fit(texts) if name == "char" else BPETokenizer.train(texts, vocab_size=vocab_size)
    if name.startswith("char:"):
        return CharTokenizer.load(name[5:])
    if name.startswith("bpe:"):
        return BPETokenizer.load(name[4:])
    if os.path.exists(name):
        return load_tokenizer(name)
    raise ValueError(
        f"unknown tokenizer {name!r}; choose 'byte', 'char', 'char:<vocab.json>', 'bpe', "
        "'bpe:<tokenizer.json>' or the path of a saved tokenizer"
    )


# --------------------------------------------------------------------- fixed-length sequences
def _check_length(length: int) -> int:
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"sequence length must be an integer >= 1, got {length!r}")
    return length


def pack_sequences(ids_list: Sequence[Sequence[int]], length: int, eos_id: Optional[int]) -> torch.Tensor:
    """Concatenate documents, each followed by ``eos_id``, and cut into rows of ``length``.

    Empty documents are skipped; the trailing partial row is dropped (nanoGPT / MDLM "wrap").
    ``eos_id=None`` concatenates without separators.

    Returns:
        (N, L) int64, N = ⌊total tokens / L⌋ (ValueError if the corpus is shorter than one row).
    """
    length = _check_length(length)
    parts = []
    sep = np.array([] if eos_id is None else [eos_id], dtype=np.int64)
    for ids in ids_list:
        if len(ids) == 0:
            continue
        parts.append(np.asarray(ids, dtype=np.int64))
        parts.append(sep)
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    n = stream.shape[0] // length
    if n == 0:
        raise ValueError(f"corpus has {stream.shape[0]} tokens (with EOS), fewer than one row of length {length}")
    return torch.from_numpy(stream[: n * length].copy()).view(n, length)  # (N, L)


def pad_sequences(
    ids_list: Sequence[Sequence[int]], length: int, pad_id: int, eos_id: Optional[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One document per row: its tokens, ``eos_id``, then ``pad_id`` up to ``length``.

    A document whose tokens + EOS exceed ``length`` continues on the following rows (nothing is
    dropped; EOS only on its last row). Empty documents are skipped. ``eos_id=None`` appends no EOS.

    Returns:
        tokens (N, L) int64 and valid (N, L) bool (False exactly on padding).
    """
    length = _check_length(length)
    if pad_id is None:
        raise ValueError("pad_sequences needs a pad_id (this vocabulary has none: use pack_sequences)")
    rows: list[np.ndarray] = []
    for ids in ids_list:
        if len(ids) == 0:
            continue
        doc = np.asarray(ids, dtype=np.int64)
        if eos_id is not None:
            doc = np.append(doc, eos_id)
        rows.extend(doc[start : start + length] for start in range(0, doc.shape[0], length))
    if not rows:
        raise ValueError("pad_sequences: empty corpus (no non-empty document)")
    tokens = np.full((len(rows), length), pad_id, dtype=np.int64)
    valid = np.zeros((len(rows), length), dtype=bool)
    for r, row in enumerate(rows):
        tokens[r, : row.shape[0]] = row
        valid[r, : row.shape[0]] = True
    return torch.from_numpy(tokens), torch.from_numpy(valid)


@dataclass(frozen=True)
class TokenData:
    """Fixed-length token sequences for training.

    Attributes:
        tokens: (N, L) int64 ids in ``0 .. n_data_tokens − 1`` (never the mask).
        tokenizer: whatever defines the ids: a tokenizer of this module or a synthetic source of
            :mod:`genspace.data.sources` (both expose ``vocab_size``, ``n_data_tokens``,
            ``mask_id``, ``pad_id``, ``eos_id``, ``bos_id``).
        valid: (N, L) bool loss mask for padded data (False on PAD), None when every position
            counts (packed data, sources).
    """

    tokens: torch.Tensor  # (N, L) int64
    tokenizer: Any
    valid: Optional[torch.Tensor] = None  # (N, L) bool

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def length(self) -> int:
        return self.tokens.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def n_data_tokens(self) -> int:
        return self.tokenizer.n_data_tokens

    @property
    def mask_id(self) -> int:
        return self.tokenizer.mask_id


def tokenize_corpus(docs: Sequence[str], tokenizer, length: int, mode: str = "pack") -> TokenData:
    """Encode documents and make fixed-length rows: ``mode="pack"`` (:func:`pack_sequences`) or
    ``"pad"`` (:func:`pad_sequences`, with ``valid``)."""
    if mode not in ("pack", "pad"):
        raise ValueError(f"unknown sequence mode {mode!r}; choose 'pack' or 'pad'")
    if isinstance(docs, str):
        raise ValueError("tokenize_corpus expects a list of documents, got one string (wrap it in a list)")
    ids_list = tokenizer.encode_batch(list(docs))
    if mode == "pack":
        return TokenData(pack_sequences(ids_list, length, tokenizer.eos_id), tokenizer)
    tokens, valid = pad_sequences(ids_list, length, tokenizer.pad_id, tokenizer.eos_id)
    return TokenData(tokens, tokenizer, valid)


# ---------------------------------------------------------------------------------- prompts
def encode_prompt(tokenizer, text: str, context_length: int) -> torch.Tensor:
    """The prompt's ids, (P,) int64, checked to fit a context of ``context_length`` tokens.

    Raises ``ValueError`` if P > ``context_length`` (naming both) or if the text has a character
    the tokenizer does not know (character tokenizer).
    """
    context_length = _check_length(context_length)
    try:
        ids = tokenizer.encode(text)
    except ValueError as e:
        raise ValueError(f"prompt cannot be encoded: {e}") from None
    if len(ids) > context_length:
        raise ValueError(f"prompt has {len(ids)} tokens, longer than the context length {context_length}")
    return torch.tensor(ids, dtype=torch.int64)


def prompt_canvas(prompt_ids: torch.Tensor, n: int, length: int, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The starting point of conditional masked-diffusion sampling (LLaDA): the prompt in the
    first P positions, the mask everywhere else.

    Returns:
        x (n, L) int64 and keep (n, L) bool (True on the prompt: positions a sampler must not change,
        the ``keep`` argument of :meth:`~genspace.discrete.processes.AbsorbingProcess.sample`).
    """
    length = _check_length(length)
    prompt_ids = torch.as_tensor(prompt_ids, dtype=torch.int64)
    if prompt_ids.ndim != 1:
        raise ValueError(f"prompt_ids must be 1-D, got shape {tuple(prompt_ids.shape)}")
    p = prompt_ids.shape[0]
    if p > length:
        raise ValueError(f"prompt has {p} tokens, longer than the context length {length}")
    x = torch.full((n, length), mask_id, dtype=torch.int64, device=prompt_ids.device)
    x[:, :p] = prompt_ids
    keep = torch.zeros((n, length), dtype=torch.bool, device=prompt_ids.device)
    keep[:, :p] = True
    return x, keep


# ---------------------------------------------------------------------------------- corpora
_GLOB_CHARS = set("*?[")


def _expand_paths(paths_or_glob) -> list[Path]:
    items = [paths_or_glob] if isinstance(paths_or_glob, (str, os.PathLike)) else list(paths_or_glob)
    if not items:
        raise ValueError("empty corpus: no paths given")
    files: list[Path] = []
    for item in items:
        s = os.fspath(item)
        if _GLOB_CHARS & set(s) and not os.path.exists(s):
            matched = sorted(_glob.glob(s, recursive=True))
            if not matched:
                raise FileNotFoundError(f"no file matches the pattern {s!r}")
            files.extend(Path(m) for m in matched if os.path.isfile(m))
        elif os.path.isdir(s):
            files.extend(sorted(p for p in Path(s).rglob("*.txt") if p.is_file()))
        elif os.path.isfile(s):
            files.append(Path(s))
        else:
            raise FileNotFoundError(f"text file not found: {s}")
    return files


def load_text_files(paths_or_glob, *, split: str = "file") -> list[str]:
    """Documents from UTF-8 text files.

    Args:
        paths_or_glob: a path, a glob pattern (``"data/*.txt"``, ``**`` allowed), a folder (all
            ``*.txt`` below it, sorted), or a list of these.
        split: ``"file"`` — one document per file, its text unchanged; ``"paragraph"`` — each file
            is split on blank lines and every paragraph (stripped) is a document.

    Documents that are empty or only whitespace are dropped; if none is left, ``ValueError``
    ("empty corpus"). A missing path raises ``FileNotFoundError`` naming it.
    """
    if split not in ("file", "paragraph"):
        raise ValueError(f"unknown split {split!r}; choose 'file' or 'paragraph'")
    files = _expand_paths(paths_or_glob)
    docs: list[str] = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{f}: not UTF-8 text ({e})") from None
        if split == "file":
            docs.append(text)
        else:
            paragraphs, current = [], []
            for line in text.splitlines():
                if line.strip():
                    current.append(line)
                elif current:
                    paragraphs.append("\n".join(current).strip())
                    current = []
            if current:
                paragraphs.append("\n".join(current).strip())
            docs.extend(paragraphs)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ValueError(f"empty corpus: no non-whitespace text in {[str(f) for f in files]}")
    return docs


_HF_FORMATS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".csv": "csv"}


def load_hf_dataset(
    path: PathLike,
    split: str = "train",
    text_field: str = "text",
    *,
    cache_dir: Optional[PathLike] = None,
) -> list[str]:
    """Documents from a LOCAL HF ``datasets`` source; nothing is downloaded.

    Args:
        path: a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (read with
            ``datasets.load_from_disk``), or a local ``.txt`` (one document per line), ``.json`` /
            ``.jsonl`` or ``.csv`` file (read with ``datasets.load_dataset(<format>,
            data_files=path)``). A hub name is refused: the path must exist.
        split: the split of a saved ``DatasetDict`` (ignored for a saved single ``Dataset`` and for
            files, which have one split).
        text_field: the column holding the text.
        cache_dir: where ``load_dataset`` keeps its Arrow cache for files (HF's default if None).

    Rows whose text is empty or whitespace are dropped; none left → ``ValueError`` ("empty corpus").
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset path not found: {path} (only local datasets are read; nothing is downloaded)")
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"load_hf_dataset needs the 'datasets' package: {_TEXT_EXTRA}") from e
    if path.is_dir():
        if not any((path / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
            raise ValueError(f"{path} is not a folder written by save_to_disk (no dataset_info.json / dataset_dict.json)")
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"split {split!r} not in the saved dataset {path}; it has {list(ds.keys())}")
            ds = ds[split]
    else:
        fmt = _HF_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise ValueError(f"{path}: unknown file type {path.suffix!r}; expected one of {sorted(_HF_FORMATS)}")
        ds = datasets.load_dataset(
            fmt, data_files=str(path), split="train", cache_dir=None if cache_dir is None else str(cache_dir)
        )
    if text_field not in ds.column_names:
        raise ValueError(f"text_field {text_field!r} is not a column of {path}; columns are {ds.column_names}")
    docs = [t for t in ds[text_field] if isinstance(t, str) and t.strip()]
    if not docs:
        raise ValueError(f"empty corpus: no non-whitespace text in column {text_field!r} of {path}")
    return docs

"""WikiText-2 at word level: the data layer of the language-model setting (no model, no training).

Splits
    The package ships only the validation and test splits of WikiText-2 (gzip-compressed, in
    ``moegeo/data/wikitext-2/``, CC BY-SA 3.0; attribution in the README.md there); the full
    train split is NOT shipped. So ``load_wikitext()`` with no path TRAINS on ``valid`` and
    HOLDS OUT ``test``. Given a directory holding the full dataset, it trains on ``train``,
    holds out ``test`` and also exposes ``valid``.
Tokens
    Each line is split on whitespace (``str.split()``) and every non-empty line ends with one
    ``<eos>``; blank lines (WikiText's paragraph breaks) produce no token. This is the PyTorch
    ``word_language_model`` convention except that it also appends ``<eos>`` to blank lines;
    we skip those so paragraph breaks do not become runs of trivially predictable ``<eos>``.
Vocabulary
    Id 0 is ``<unk>``; ids 1 .. vocab_size-1 are the ``vocab_size - 1`` most frequent tokens of
    the TRAINING split other than ``<unk>`` (``<eos>`` counts as a token), by count descending,
    ties broken by first occurrence in the training split. Every other token, including
    WikiText's own literal ``<unk>``, maps to id 0. ``vocab_size`` larger than the number of
    distinct non-``<unk>`` training tokens + 1 is an error, not silently capped: the model's
    output width is set from it.
Integrity
    The sha256 of each shipped file's decompressed content is recorded below and checked on
    every load; a mismatch is an error.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from types import MappingProxyType

import torch

UNK, EOS = "<unk>", "<eos>"

# Decompressed-content sha256 of the shipped files (the original WikiText-2 valid/test text).
SHIPPED_SHA256 = MappingProxyType(
    {
        "valid.txt.gz": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
        "test.txt.gz": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
    }
)
# importlib.resources: works for editable and regular installs alike (tests monkeypatch it).
_SHIPPED_DIR = resources.files("moegeo.data") / "wikitext-2"


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no truth value for ==
class WikiTextCorpus:
    """A tokenized WikiText corpus: id tensors per split, the vocabulary and unk rates.

    Attributes
    ----------
    vocab : tuple of str, length V
        ``vocab[i]`` is the word of id ``i``; ``vocab[0] == "<unk>"``.
    train : torch.Tensor, shape (N_train,), long
        The split the model trains on (``valid`` for the shipped copy, ``train`` otherwise).
    heldout : torch.Tensor, shape (N_heldout,), long
        The held-out split (``test``), never used for the vocabulary.
    valid : torch.Tensor or None, shape (N_valid,), long
        The validation split when loaded from a user path that has one; None for the shipped
        copy (where ``valid`` already is ``train``).
    unk_rate : mapping str -> float
        Fraction of each split's tokens (``<eos>`` included) mapped to ``<unk>``; keys
        ``"train"``, ``"heldout"`` and ``"valid"`` when present.
    files : mapping str -> str
        The file each split was read from, same keys.
    """

    vocab: tuple[str, ...]
    train: torch.Tensor
    heldout: torch.Tensor
    valid: torch.Tensor | None
    unk_rate: Mapping[str, float]
    files: Mapping[str, str]

    @property
    def vocab_size(self) -> int:
        """V, the number of ids (``<unk>`` included)."""
        return len(self.vocab)

    @cached_property
    def index(self) -> dict[str, int]:
        """Word -> id for the V vocabulary words (unknown words are not keys)."""
        return {w: i for i, w in enumerate(self.vocab)}

    def encode(self, words: Sequence[str]) -> torch.Tensor:
        """Ids of ``words``, shape (len(words),), long; out-of-vocabulary words -> 0 (``<unk>``)."""
        return torch.tensor([self.index.get(w, 0) for w in words], dtype=torch.long)

    def decode(self, ids: torch.Tensor | Sequence[int]) -> list[str]:
        """Words of ``ids`` (shape (n,)); ``decode(encode(w)) == w`` for in-vocabulary words."""
        return [self.vocab[i] for i in torch.as_tensor(ids).tolist()]


def load_wikitext(path: str | os.PathLike | None = None, vocab_size: int = 2048) -> WikiTextCorpus:
    """Load WikiText-2 at word level: the shipped copy, or the full dataset from ``path``.

    Parameters
    ----------
    path : str, PathLike or None
        None: the copy shipped in the package (valid and test only): TRAIN on ``valid``, HOLD OUT
        ``test``. A directory: the standard files ``wiki.{train,valid,test}.tokens`` or
        ``{train,valid,test}.txt``, each optionally ``.gz`` (first found in that order): TRAIN on
        ``train``, HOLD OUT ``test``; ``valid`` is optional and exposed when present.
    vocab_size : int
        V, the number of ids, ``<unk>`` included; 2 <= V <= (distinct non-``<unk>`` training
        tokens) + 1, else ValueError (not capped).

    Returns
    -------
    WikiTextCorpus
        ``train`` (N_train,), ``heldout`` (N_heldout,), ``valid`` (N_valid,) or None, all long
        with values in [0, V).

    Notes
    -----
    Tokens: whitespace split, one ``<eos>`` after each non-empty line, none for blank lines.
    Vocabulary: id 0 ``<unk>``, then the V - 1 most frequent non-``<unk>`` tokens of the TRAINING
    split, by count descending, ties by first occurrence; everything else maps to 0.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist, or lacks a train or test file (the names looked for are listed).
    ValueError
        ``path`` is not a directory; a file is empty, not valid gzip or not UTF-8; a shipped file
        fails its checksum; ``vocab_size`` is out of range.
    """
    if path is None:
        texts = {"train": _read_shipped("valid.txt.gz"), "heldout": _read_shipped("test.txt.gz")}
    else:
        texts = _read_user_dir(Path(path))
    return _build(texts, vocab_size)


def unigram_perplexity(train_ids: torch.Tensor, heldout_ids: torch.Tensor, vocab_size: int) -> float:
    """Held-out perplexity of the add-one (Laplace) smoothed unigram model estimated on train.

    ``p(w) = (count_train(w) + 1) / (N_train + V)``, so no id in [0, V) has probability 0;
    returns ``exp(-mean(log p(heldout_ids)))``. The baseline a language model must beat. On
    natural text it lies far below V, the uniform model's perplexity (it can exceed V only when
    held-out frequencies differ sharply from train).

    Parameters
    ----------
    train_ids : torch.Tensor, shape (N_train,), integer, values in [0, V)
    heldout_ids : torch.Tensor, shape (N_heldout,), integer, values in [0, V)
    vocab_size : int
        V.

    Returns
    -------
    float
        The perplexity, >= 1.
    """
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    _check_ids(train_ids, "train_ids", vocab_size)
    _check_ids(heldout_ids, "heldout_ids", vocab_size)
    counts = torch.bincount(train_ids, minlength=vocab_size).double()
    log_p = torch.log(counts + 1) - math.log(train_ids.numel() + vocab_size)
    return math.exp(-log_p[heldout_ids].mean().item())


def batches(
    ids: torch.Tensor, context: int, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of random contiguous windows for next-token training.

    Each row starts at an offset drawn uniformly from [0, N - context - 1]; ``x`` is the
    window and ``y`` the same window shifted by one token (``y[b, t] == x[b, t + 1]``).
    Call repeatedly for more batches; the same generator state gives the same batch.

    Parameters
    ----------
    ids : torch.Tensor, shape (N,), integer, N >= context + 1
    context : int
        Window length T >= 1.
    batch_size : int
        B >= 1.
    generator : torch.Generator
        Source of the offsets (required, for reproducibility).

    Returns
    -------
    x, y : torch.Tensor, shape (B, T) each, dtype of ``ids``
    """
    _check_ids(ids, "ids")
    _check_positive(context=context, batch_size=batch_size)
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator (for reproducible batches), got {type(generator).__name__}"
        )
    n = ids.numel()
    if n < context + 1:
        raise ValueError(f"ids has {n} tokens; a window of context={context} needs at least {context + 1}")
    starts = torch.randint(0, n - context, (batch_size,), generator=generator)
    windows = ids[starts[:, None] + torch.arange(context + 1)]
    return windows[:, :-1], windows[:, 1:]


def heldout_windows(ids: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows covering a held-out split, for evaluation.

    Window i has inputs ``ids[i*T : (i+1)*T]`` and targets ``ids[i*T+1 : (i+1)*T+1]``, for
    ``i < n = (N - 1) // T``. The tail, the last ``(N - 1) - n*T < T`` targets, is dropped (so
    every window has the full context length); each window is scored without the previous
    window's tokens as context.

    Parameters
    ----------
    ids : torch.Tensor, shape (N,), integer, N >= context + 1
    context : int
        Window length T >= 1.

    Returns
    -------
    x, y : torch.Tensor, shape (n, T) each, dtype of ``ids``
    """
    _check_ids(ids, "ids")
    _check_positive(context=context)
    n = (ids.numel() - 1) // context
    if n == 0:
        raise ValueError(f"ids has {ids.numel()} tokens; one window of context={context} needs at least {context + 1}")
    x = ids[: n * context].reshape(n, context)
    y = ids[1 : n * context + 1].reshape(n, context)
    return x, y


# --- reading -----------------------------------------------------------------------------


def shipped_text(split: str = "test") -> str:
    """The raw text of a shipped WikiText-2 split (``"valid"`` or ``"test"``), checksum-checked:
    e.g. text to run a Hugging Face model on (``python -m moegeo probe``)."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test' (the shipped splits), got {split!r}")
    return _read_shipped(f"{split}.txt.gz")[1]


def _read_shipped(name: str) -> tuple[str, str]:
    """(label, text) of a shipped file, its decompressed sha256 checked."""
    file = _SHIPPED_DIR / name
    if not file.is_file():
        raise FileNotFoundError(
            f"shipped WikiText file {name} is missing from {_SHIPPED_DIR}; the package data was not "
            "installed: reinstall moegeo (pyproject.toml lists it under [tool.setuptools.package-data])"
        )
    raw = _decompress(file.read_bytes(), f"shipped {name}")
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHIPPED_SHA256[name]:
        raise ValueError(
            f"shipped WikiText file {name}: the sha256 of its decompressed content is {digest}, expected "
            f"{SHIPPED_SHA256[name]} (recorded in moegeo/wikitext.py); the copy is corrupt or was modified: "
            "restore it from git or reinstall moegeo"
        )
    return f"shipped {name}", _decode(raw, f"shipped {name}")


def split_files(root: str | os.PathLike) -> dict[str, Path]:
    """The file of each split that ``load_wikitext(root)`` reads: role (``train``, ``valid``,
    ``heldout``) -> path, the first of ``wiki.<split>.tokens``, ``<split>.txt`` (each optionally
    ``.gz``) present; ``valid`` only when present. Raises ``FileNotFoundError`` when ``root``
    does not exist or lacks a train or test file (listing the names looked for and what it
    holds), ``ValueError`` when it is a file."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(
            f"WikiText path {root} does not exist; expected a directory holding "
            "wiki.train.tokens / wiki.valid.tokens / wiki.test.tokens (or train.txt ...)"
        )
    if not root.is_dir():
        raise ValueError(f"WikiText path {root} is a file; expected the directory that holds the split files")
    found = {}
    for role, split in (("train", "train"), ("valid", "valid"), ("heldout", "test")):
        names = [base + gz for base in (f"wiki.{split}.tokens", f"{split}.txt") for gz in ("", ".gz")]
        file = next((root / n for n in names if (root / n).is_file()), None)
        if file is not None:
            found[role] = file
        elif role != "valid":  # valid is optional: nothing is trained or scored on it
            present = sorted(p.name for p in root.iterdir())
            raise FileNotFoundError(
                f"{root} has no {split} split: looked for {', '.join(names)}; "
                f"found {present[:20] or 'an empty directory'}"
            )
    return found


#: (path, size, mtime_ns) -> sha256 of the file's bytes, for ``data_digest`` (in-process only)
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    """sha256 of the bytes of ``path``, computed once per (path, size, modification time)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _FILE_DIGESTS[key] = h.hexdigest()
    return _FILE_DIGESTS[key]


def data_digest(path: str | os.PathLike | None = None) -> str:
    """sha256 over the files ``load_wikitext(path)`` reads (each split's role, file name and the
    sha256 of its bytes): the shipped copy for None, else ``split_files(path)``. Identical data
    give the same digest wherever they lie; a rewritten file gives another. Each file's digest is
    kept in this process per (path, size, modification time)."""
    if path is None:
        files = {"train": _SHIPPED_DIR / "valid.txt.gz", "heldout": _SHIPPED_DIR / "test.txt.gz"}
        parts = [(role, Path(str(f)).name, SHIPPED_SHA256[Path(str(f)).name]) for role, f in files.items()]
    else:
        parts = [(role, f.name, _file_digest(f)) for role, f in split_files(path).items()]
    return hashlib.sha256("\n".join(":".join(p) for p in parts).encode()).hexdigest()


def _read_user_dir(root: Path) -> dict[str, tuple[str, str]]:
    """(label, text) per split found in a user's WikiText directory; train and test required."""
    found = {}
    for role, file in split_files(root).items():
        raw = _decompress(file.read_bytes(), str(file)) if file.suffix == ".gz" else file.read_bytes()
        found[role] = (str(file), _decode(raw, str(file)))
    return found


def _decompress(data: bytes, label: str) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError; truncation is EOFError
        raise ValueError(
            f"{label}: not a valid gzip file ({type(err).__name__}: {err}); expected "
            "gzip-compressed WikiText text: re-download it or decompress it by hand"
        ) from None


def _decode(raw: bytes, label: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{label}: not UTF-8 text ({err}); expected tokenized WikiText") from None


# --- tokens, vocabulary, ids -------------------------------------------------------------


def tokenize(text: str) -> list[str]:
    """Whitespace tokens of ``text``, one ``<eos>`` after each non-empty line (blank lines: none)."""
    out: list[str] = []
    for line in text.split("\n"):  # "\n" only, like iterating over a file; \r is whitespace
        words = line.split()
        if words:
            out.extend(words)
            out.append(EOS)
    return out


def build_vocab(train_tokens: Sequence[str], vocab_size: int) -> tuple[str, ...]:
    """``<unk>`` then the ``vocab_size - 1`` most frequent non-``<unk>`` tokens, ties by first occurrence."""
    counts: dict[str, int] = {}
    for w in train_tokens:  # dicts keep insertion order = first occurrence
        counts[w] = counts.get(w, 0) + 1
    counts.pop(UNK, None)
    if not isinstance(vocab_size, int) or not 2 <= vocab_size <= len(counts) + 1:
        raise ValueError(
            f"vocab_size must be an int in [2, {len(counts) + 1}] (<unk> + the {len(counts)} "
            f"distinct non-<unk> training tokens), got {vocab_size!r}"
        )
    ranked = sorted(counts, key=counts.__getitem__, reverse=True)  # stable: ties keep first-occurrence order
    return (UNK, *ranked[: vocab_size - 1])


def _build(texts: dict[str, tuple[str, str]], vocab_size: int) -> WikiTextCorpus:
    tokens = {}
    for role, (label, text) in texts.items():
        tokens[role] = tokenize(text)
        if not tokens[role]:
            raise ValueError(f"{label} is empty: no tokens in {len(text)} characters; expected WikiText text")
    vocab = build_vocab(tokens["train"], vocab_size)
    index = {w: i for i, w in enumerate(vocab)}
    ids = {role: torch.tensor([index.get(w, 0) for w in toks], dtype=torch.long) for role, toks in tokens.items()}
    return WikiTextCorpus(
        vocab=vocab,
        train=ids["train"],
        heldout=ids["heldout"],
        valid=ids.get("valid"),
        unk_rate=MappingProxyType({r: (t == 0).double().mean().item() for r, t in ids.items()}),
        files=MappingProxyType({r: label for r, (label, _) in texts.items()}),
    )


def _check_ids(ids, name: str, vocab_size: int | None = None) -> None:
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        found = f"{tuple(ids.shape)} {ids.dtype}" if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"{name} must be a 1-D integer tensor of token ids, got {found}")
    if ids.numel() == 0:
        raise ValueError(f"{name} is empty; expected at least one token id")
    if vocab_size is not None and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(
            f"{name} must lie in [0, {vocab_size}), found values in [{ids.min().item()}, {ids.max().item()}]"
        )


def _check_positive(**values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")

"""WikiText-2 data layer: shipped copy, split/eos/vocabulary rules, unigram baseline, windows, errors."""

import gzip
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import moegeo
from moegeo.data import wikitext
from moegeo.data.wikitext import (
    EOS,
    UNK,
    batches,
    build_vocab,
    heldout_windows,
    load_wikitext,
    tokenize,
    unigram_perplexity,
)

PACKAGE_DIR = Path(moegeo.__file__).resolve().parent
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2"  # the colleague's source copy


@pytest.fixture(scope="module")
def shipped():
    return load_wikitext()


def write_corpus(root: Path, splits: dict, pattern="{}.txt", gz=False) -> Path:
    """Write {split: text} as root/pattern.format(split) (+ .gz); return root."""
    root.mkdir(parents=True, exist_ok=True)
    for split, text in splits.items():
        name = pattern.format(split)
        data = text.encode()
        (root / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return root


# --- the shipped copy --------------------------------------------------------------------


def test_shipped_copy_loads_from_a_fresh_clone(tmp_path):
    # The data module and its data alone, in a tree with no ../shared, first on sys.path. A stub
    # __init__ keeps this test independent of (and fast despite) the rest of the package.
    clone = tmp_path / "clone"
    shutil.copytree(PACKAGE_DIR / "data" / "wikitext-2", clone / "moegeo" / "data" / "wikitext-2")
    shutil.copy(PACKAGE_DIR / "data" / "wikitext.py", clone / "moegeo" / "data")
    (clone / "moegeo" / "__init__.py").write_text("")
    (clone / "moegeo" / "data" / "__init__.py").write_text("")
    code = (
        "import moegeo, moegeo.data.wikitext as w; c = w.load_wikitext(); "
        "print(moegeo.__file__); print(c.train.numel(), c.heldout.numel(), c.vocab_size)"
    )
    env = {**os.environ, "PYTHONPATH": str(clone), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    file, sizes = out.stdout.split("\n")[:2]
    assert Path(file).resolve().is_relative_to(clone)
    assert sizes == "216347 244102 2048"


def test_every_shipped_file_is_checksummed_and_attributed():
    data_dir = PACKAGE_DIR / "data" / "wikitext-2"
    assert sorted(p.name for p in data_dir.glob("*.gz")) == sorted(wikitext.SHIPPED_SHA256)
    readme = (data_dir / "README.md").read_text()
    assert "CC BY-SA 3.0" in readme and "Merity" in readme
    for digest in wikitext.SHIPPED_SHA256.values():
        assert digest in readme


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"source copy {SHARED} not present")
@pytest.mark.parametrize("split", ["valid", "test"])
def test_shipped_content_equals_the_source_text(split):
    shipped_bytes = gzip.decompress((PACKAGE_DIR / "data" / "wikitext-2" / f"{split}.txt.gz").read_bytes())
    assert shipped_bytes == (SHARED / f"{split}.txt").read_bytes()


def test_shipped_trains_on_valid_and_holds_out_test(shipped):
    raw = {
        s: gzip.decompress((PACKAGE_DIR / "data" / "wikitext-2" / f"{s}.txt.gz").read_bytes()).decode()
        for s in ("valid", "test")
    }
    assert shipped.train.numel() == len(tokenize(raw["valid"]))
    assert shipped.heldout.numel() == len(tokenize(raw["test"]))
    assert shipped.valid is None and dict(shipped.files) == {
        "train": "shipped valid.txt.gz",
        "heldout": "shipped test.txt.gz",
    }
    assert shipped.vocab_size == 2048 == len(set(shipped.vocab)) and shipped.vocab[0] == UNK
    assert EOS in shipped.vocab
    for t in (shipped.train, shipped.heldout):
        assert t.dtype == torch.long and t.dim() == 1 and 0 <= t.min() and t.max() < 2048
    # WikiText already holds <unk> for rare words, so the rate is large but far from 1.
    assert 0.05 < shipped.unk_rate["train"] < shipped.unk_rate["heldout"] < 0.5


def test_shipped_unigram_perplexity_beats_uniform(shipped):
    ppl = unigram_perplexity(shipped.train, shipped.heldout, shipped.vocab_size)
    assert 1 < ppl < shipped.vocab_size / 4  # uniform = 2048; Zipfian text is far more predictable


# --- tokens and vocabulary on a hand-written corpus --------------------------------------


def test_eos_after_each_non_empty_line_only():
    assert tokenize(" = A = \n \n x  y \r\n\n") == ["=", "A", "=", EOS, "x", "y", EOS]
    assert tokenize("") == [] and tokenize(" \n\n") == []


TRAIN = "b a c\n\n a b d <unk>\n"  # b a c <eos> a b d <unk> <eos>: b,a,<eos> x2; c,d,<unk> x1


def test_vocabulary_rule_and_unk_mapping(tmp_path):
    c = load_wikitext(write_corpus(tmp_path, {"train": TRAIN, "valid": "c\n", "test": "a z\n"}), vocab_size=4)
    # counts b=a=<eos>=2 (ties: first occurrence b, a, <eos>); c, d and the literal <unk> -> 0
    assert c.vocab == (UNK, "b", "a", EOS)
    assert c.train.tolist() == [1, 2, 0, 3, 2, 1, 0, 0, 3]
    assert c.valid.tolist() == [0, 3] and c.heldout.tolist() == [2, 0, 3]
    assert dict(c.unk_rate) == {"train": 3 / 9, "valid": 1 / 2, "heldout": 1 / 3}
    assert c.encode(["a", "zzz", EOS]).tolist() == [2, 0, 3] and c.decode([1, 3]) == ["b", EOS]


def test_ties_follow_first_occurrence_not_alphabet():
    assert build_vocab(tokenize("z y x\n"), 4) == (UNK, "z", "y", "x")
    assert build_vocab(tokenize("x y y z z z\n"), 3) == (UNK, "z", "y")


def test_largest_vocab_is_every_training_word_plus_unk(tmp_path):
    root = write_corpus(tmp_path, {"train": TRAIN, "test": "a\n"})
    assert load_wikitext(root, vocab_size=6).vocab == (UNK, "b", "a", EOS, "c", "d")
    with pytest.raises(ValueError, match=r"in \[2, 6\].*got 7"):
        load_wikitext(root, vocab_size=7)


words = st.sampled_from(["the", "a", "cat", "sat", "on", "mat", UNK, "@-@", "="])
lines = st.lists(st.lists(words, max_size=6).map(" ".join), min_size=1, max_size=8).map("\n".join)


@given(
    train=lines.filter(lambda t: len(set(tokenize(t)) - {UNK}) >= 1),
    test=lines.filter(lambda t: tokenize(t)),
    frac=st.floats(0, 1),
)
def test_ids_round_trip_and_vocab_matches_a_reference(train, test, frac):
    toks = tokenize(train)
    distinct = list(dict.fromkeys(t for t in toks if t != UNK))
    V = 2 + round(frac * (len(distinct) - 1))
    with tempfile.TemporaryDirectory() as d:
        c = load_wikitext(write_corpus(Path(d), {"train": train, "test": test}), vocab_size=V)
    # reference: sort by (-count, first occurrence)
    ref = sorted(distinct, key=lambda w: (-toks.count(w), toks.index(w)))[: V - 1]
    assert c.vocab == (UNK, *ref)
    for ids, text in ((c.train, train), (c.heldout, test)):
        assert ids.dtype == torch.long and 0 <= ids.min() and ids.max() < V
        assert torch.equal(c.encode(c.decode(ids)), ids)  # id -> word -> id
        assert c.decode(ids) == [w if w in c.vocab else UNK for w in tokenize(text)]


# --- user directories --------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern,gz", [("wiki.{}.tokens", False), ("wiki.{}.tokens", True), ("{}.txt", False), ("{}.txt", True)]
)
def test_user_directory_trains_on_train_and_holds_out_test(tmp_path, pattern, gz):
    root = write_corpus(tmp_path, {"train": "x x y\nx\n", "valid": "y x\n", "test": "y q\n"}, pattern, gz)
    c = load_wikitext(root, vocab_size=3)
    assert c.vocab == (UNK, "x", EOS)  # train counts x=3, <eos>=2, y=1; valid and test not counted
    assert c.train.tolist() == [1, 1, 0, 2, 1, 2] and c.valid.tolist() == [0, 1, 2] and c.heldout.tolist() == [0, 0, 2]
    name = pattern.format("test") + (".gz" if gz else "")
    assert c.files["heldout"] == str(root / name)


def test_user_directory_without_valid_is_accepted(tmp_path):
    c = load_wikitext(write_corpus(tmp_path, {"train": "a b\n", "test": "b\n"}), vocab_size=2)
    assert c.valid is None and set(c.unk_rate) == {"train", "heldout"}


# --- unigram baseline --------------------------------------------------------------------


def test_unigram_perplexity_hand_computed():
    # counts (1, 2, 1, 0) over N=4, V=4: add-one p = (2, 3, 2, 1) / 8; held-out [1, 3]
    # ppl = exp(-(log 3/8 + log 1/8) / 2) = 8 / sqrt(3)
    ppl = unigram_perplexity(torch.tensor([0, 1, 1, 2]), torch.tensor([1, 3]), 4)
    assert ppl == pytest.approx(8 / math.sqrt(3), rel=1e-12)


def test_unigram_perplexity_of_a_flat_train_split_is_uniform():
    assert unigram_perplexity(torch.arange(5).repeat(3), torch.tensor([4, 4, 0]), 5) == pytest.approx(5.0)


# --- windows -----------------------------------------------------------------------------


def test_batches_shapes_shift_and_contiguity():
    ids = torch.arange(100) * 7
    x, y = batches(ids, context=9, batch_size=5, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 9) and x.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y, x + 7)  # shift by one, contiguous
    assert x.min() >= 0 and y.max() <= 99 * 7


def test_batches_are_deterministic_for_a_seeded_generator():
    ids = torch.arange(1000)
    a = batches(ids, 16, 8, torch.Generator().manual_seed(3))
    b = batches(ids, 16, 8, torch.Generator().manual_seed(3))
    c = batches(ids, 16, 8, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


def test_batches_reach_both_ends_of_the_split():
    ids = torch.arange(6)  # context 4: the only starts are 0 and 1
    x, y = batches(ids, 4, 200, torch.Generator().manual_seed(0))
    assert set(x[:, 0].tolist()) == {0, 1} and y[:, -1].max() == 5


@given(n=st.integers(2, 60), T=st.integers(1, 60), seed=st.integers(0, 2**31 - 1))
def test_heldout_windows_tile_the_split_and_drop_a_short_tail(n, T, seed):
    ids = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if n < T + 1:
        with pytest.raises(ValueError, match="needs at least"):
            heldout_windows(ids, T)
        return
    x, y = heldout_windows(ids, T)
    k = (n - 1) // T
    assert x.shape == y.shape == (k, T)
    assert torch.equal(x.flatten(), ids[: k * T]) and torch.equal(y.flatten(), ids[1 : k * T + 1])
    assert 0 <= (n - 1) - k * T < T  # dropped targets: fewer than one window


# --- errors ------------------------------------------------------------------------------


def test_path_that_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_wikitext(tmp_path / "nope")


def test_path_that_is_a_file(tmp_path):
    (tmp_path / "wiki.train.tokens").write_text("a\n")
    with pytest.raises(ValueError, match="is a file"):
        load_wikitext(tmp_path / "wiki.train.tokens")


@pytest.mark.parametrize("present,missing", [("test", "train"), ("train", "test")])
def test_directory_missing_a_split_names_the_files_looked_for(tmp_path, present, missing):
    write_corpus(tmp_path, {present: "a b\n"}, "wiki.{}.tokens")
    with pytest.raises(
        FileNotFoundError,
        match=rf"no {missing} split.*wiki\.{missing}\.tokens.*{missing}\.txt\.gz"
        rf".*found \['wiki\.{present}\.tokens'\]",
    ):
        load_wikitext(tmp_path)


@pytest.mark.parametrize("text", ["", " \n \n"])
@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_empty_file(tmp_path, split, text):
    write_corpus(tmp_path, {"train": "a b\n", "valid": "a\n", "test": "b\n", split: text})
    with pytest.raises(ValueError, match=rf"{split}\.txt is empty"):
        load_wikitext(tmp_path)


@pytest.mark.parametrize(
    "blob", [b"plain text, not gzip\n", gzip.compress(b"a b c\n" * 100)[:-12]], ids=["not-gzip", "truncated"]
)
def test_corrupt_gzip(tmp_path, blob):
    write_corpus(tmp_path, {"test": "a\n"})
    (tmp_path / "train.txt.gz").write_bytes(blob)
    with pytest.raises(ValueError, match=r"train\.txt\.gz: not a valid gzip file"):
        load_wikitext(tmp_path)


def test_not_utf8(tmp_path):
    write_corpus(tmp_path, {"test": "a\n"})
    (tmp_path / "train.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_wikitext(tmp_path)


def fake_shipped(monkeypatch, tmp_path, valid: bytes):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "valid.txt.gz").write_bytes(valid)
    shutil.copy(PACKAGE_DIR / "data" / "wikitext-2" / "test.txt.gz", tmp_path)
    monkeypatch.setattr(wikitext, "_SHIPPED_DIR", tmp_path)


def test_shipped_checksum_mismatch(monkeypatch, tmp_path):
    real = gzip.decompress((PACKAGE_DIR / "data" / "wikitext-2" / "valid.txt.gz").read_bytes())
    fake_shipped(monkeypatch, tmp_path, gzip.compress(real.replace(b" lobster ", b" crab ", 1)))
    with pytest.raises(
        ValueError, match=rf"valid\.txt\.gz: the sha256 .* expected {wikitext.SHIPPED_SHA256['valid.txt.gz']}"
    ):
        load_wikitext()


def test_shipped_file_corrupt_or_missing(monkeypatch, tmp_path):
    fake_shipped(monkeypatch, tmp_path, b"\x1f\x8b garbage")
    with pytest.raises(ValueError, match=r"shipped valid\.txt\.gz: not a valid gzip"):
        load_wikitext()
    (tmp_path / "valid.txt.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"valid\.txt\.gz is missing.*reinstall"):
        load_wikitext()


@pytest.mark.parametrize("V", [1, 0, -3, 2.5, 7])
def test_vocab_size_out_of_range(tmp_path, V):
    write_corpus(tmp_path, {"train": TRAIN, "test": "a\n"})
    with pytest.raises(ValueError, match=r"vocab_size must be an int in \[2, 6\]"):
        load_wikitext(tmp_path, vocab_size=V)


@pytest.mark.parametrize(
    "train,heldout,V,match",
    [
        (torch.tensor([0, 4]), torch.tensor([1]), 4, r"train_ids must lie in \[0, 4\), found values in \[0, 4\]"),
        (torch.tensor([0, 1]), torch.tensor([-1]), 4, r"heldout_ids must lie in \[0, 4\)"),
        (torch.tensor([0, 1]), torch.tensor([], dtype=torch.long), 4, "heldout_ids is empty"),
        (torch.tensor([0.0, 1.0]), torch.tensor([1]), 4, "1-D integer tensor"),
        (torch.tensor([0, 1]), torch.tensor([1]), 0, "positive int"),
    ],
)
def test_unigram_perplexity_rejects_bad_ids(train, heldout, V, match):
    with pytest.raises(ValueError, match=match):
        unigram_perplexity(train, heldout, V)


def test_window_errors():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="has 4 tokens; a window of context=4 needs at least 5"):
        batches(torch.arange(4), 4, 2, g)
    with pytest.raises(ValueError, match="context must be a positive int"):
        batches(torch.arange(4), 0, 2, g)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        batches(torch.arange(4), 2, 0, g)
    with pytest.raises(TypeError, match="torch.Generator"):
        batches(torch.arange(10), 2, 2, None)
    with pytest.raises(ValueError, match=r"1-D integer tensor.*\(2, 5\)"):
        batches(torch.zeros(2, 5, dtype=torch.long), 2, 2, g)

"""Loading a local Hugging Face checkpoint directory and tokenising a text with its own tokenizer;
nothing is ever downloaded (``local_files_only``)."""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass

import torch


#: fraction of the available memory a model may take when loaded (probing needs the rest)
MEMORY_FRACTION = 0.8
#: default number of tokens probed


#: default number of tokens probed
MAX_TOKENS = 512
#: default tokens per sequence (fewer when the model's max_position_embeddings is smaller)


#: default tokens per sequence (fewer when the model's max_position_embeddings is smaller)
CONTEXT = 512
#: fraction of unknown tokens in the probed text above which the probe warns: a few rare words are
#: normal for a word-level vocabulary, more means the text does not suit the tokenizer


#: fraction of unknown tokens in the probed text above which the probe warns: a few rare words are
#: normal for a word-level vocabulary, more means the text does not suit the tokenizer
UNKNOWN_TOKENS_WARN = 0.05


def available_memory() -> int:
    """Bytes of memory available to a new allocation: MemAvailable of /proc/meminfo (Linux), else
    the free physical pages (``os.sysconf``)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def estimate_bytes(config, *, dtype: torch.dtype = torch.float64) -> tuple[int, int]:
    """(parameter count, bytes in ``dtype``) of the causal LM a ``config`` describes, counted on the
    meta device (nothing is allocated)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n = sum(p.numel() for p in model.parameters())
    return n, n * torch.empty((), dtype=dtype).element_size()


def checkpoint_config(path: str | os.PathLike):
    """The ``transformers`` config of the local checkpoint directory ``path``. Raises
    ``FileNotFoundError`` naming ``path`` when it is not a directory or holds no ``config.json``."""
    from transformers import AutoConfig

    path = os.fspath(path)
    expected = ("expected a Hugging Face checkpoint directory saved with save_pretrained (config.json, the weights "
                "and the tokenizer)")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is not a directory; {expected}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        held = sorted(os.listdir(path))
        raise FileNotFoundError(f"{path} has no config.json; {expected}. It holds: "
                                f"{', '.join(held[:8]) + (' ...' if len(held) > 8 else '') if held else 'nothing'}")
    return AutoConfig.from_pretrained(path, local_files_only=True)


def load(path: str | os.PathLike, *, dtype: torch.dtype = torch.float64, memory_fraction: float = MEMORY_FRACTION):
    """Load a local ``transformers`` causal-LM checkpoint directory for probing.

    The size is checked from the config (``checkpoint_config``) first: a model whose parameters in
    ``dtype`` would take more than ``memory_fraction`` of the available memory raises
    ``MemoryError`` with the estimate, before anything is materialised. Loads with
    ``experts_implementation="eager"`` (float64 needs it on the CPU) and never touches the network
    (``local_files_only``).
    """
    from transformers import AutoModelForCausalLM

    config = checkpoint_config(path)
    n, need = estimate_bytes(config, dtype=dtype)
    have = available_memory()
    if need > memory_fraction * have:
        raise MemoryError(f"{path}: the model ({config.model_type}, {n / 1e9:.2f} B parameters) needs about "
                          f"{need / 2**30:.1f} GiB in {dtype} but only {have / 2**30:.1f} GiB of memory is available "
                          f"(at most {memory_fraction:.0%} of it may hold the model); load it in a smaller dtype "
                          "(e.g. dtype=torch.float32) or on a larger machine")
    model = AutoModelForCausalLM.from_pretrained(os.fspath(path), dtype=dtype, experts_implementation="eager",
                                                 local_files_only=True)
    return model.eval()


@dataclass(frozen=True)
class TokenBatch:
    """Token ids to probe, from ``tokenize``.

    Attributes
    ----------
    input_ids : (B, context) token ids: ``B = ceil(n_tokens / context)`` sequences.
    n_tokens : the tokens probed: the first ``n_tokens`` of ``input_ids.flatten()``. The rest of
        the last sequence only completes it (the text's following tokens); a causal LM's hidden
        states at a token do not depend on later tokens, so they change nothing that is probed.
        Pass ``max_tokens=n_tokens`` to ``probe_model`` / ``capture``.
    unknown : the fraction of the ``n_tokens`` tokens that are the tokenizer's unknown token
        (0 for a tokenizer without one, e.g. byte-level BPE).
    """

    input_ids: torch.Tensor
    n_tokens: int
    unknown: float


def _tokenizer_files(path: str) -> list[str]:
    """The files of ``path`` that ``save_pretrained`` of some tokenizer writes."""
    return sorted(f for f in os.listdir(path) if re.match(r"(tokenizer|vocab|merges|spiece|special_tokens_map)", f))


def load_tokenizer(path: str | os.PathLike):
    """The checkpoint's own tokenizer, from ``path`` only. Raises ``ValueError`` saying what was
    found when there is no usable one: no tokenizer file, one that does not load, or a vocabulary
    of at most one token (``transformers`` >= 5 builds such an empty tokenizer from ``config.json``
    alone, e.g. for Qwen2-MoE or OLMoE saved without a tokenizer)."""
    from transformers import AutoTokenizer

    path = os.fspath(path)
    files = _tokenizer_files(path)
    found = (f"tokenizer files: {', '.join(files)}" if files
             else "no tokenizer file (tokenizer.json, tokenizer_config.json, ...)")
    problem = None
    if files:
        try:
            tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, TypeError, KeyError) as err:
            problem = f"loading it fails ({type(err).__name__}: {err})"
        else:
            if len(tok) <= 1:
                problem = f"it loads as {type(tok).__name__} with a vocabulary of {len(tok)} token(s)"
    if not files or problem:
        raise ValueError(f"no usable tokenizer found in {path}: {found}{'; ' + problem if problem else ''}. The probe "
                         "tokenises the text with the checkpoint's own tokenizer: save it with the model, e.g. "
                         "tokenizer.save_pretrained(DIR)")
    return tok


def tokenize(path: str | os.PathLike, *, text: str | None = None, tokens: int = MAX_TOKENS,
             context: int | None = None, max_context: int | None = None) -> TokenBatch:
    """The first ``tokens`` tokens of ``text`` (default: the shipped WikiText-2 test split) by the
    checkpoint's own tokenizer in ``path`` (``load_tokenizer``), in sequences of ``context``
    tokens (default ``CONTEXT``, or ``max_context`` if smaller, at most the tokens probed).

    All ``tokens`` are probed, none are dropped: the last sequence is completed with the text's
    following tokens (from its start again when the text ends), which are run but not probed (see
    ``TokenBatch``). A text shorter than ``tokens`` gives all its tokens (``n_tokens`` says how
    many). Warns when more than ``UNKNOWN_TOKENS_WARN`` of them are the unknown token. Raises
    ``ValueError`` for ``tokens`` or ``context`` below 1, ``context`` above ``max_context`` (the
    model's ``max_position_embeddings``), no usable tokenizer, or a text that gives no tokens.
    """
    from ..data.wikitext import shipped_text

    if tokens < 1:
        raise ValueError(f"tokens must be >= 1, got {tokens}")
    if context is not None and context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    if context is not None and max_context is not None and context > max_context:
        raise ValueError(f"context {context} exceeds the model's max_position_embeddings ({max_context})")
    tok = load_tokenizer(path)
    text = shipped_text("test") if text is None else text
    context = context or min(CONTEXT, max_context or CONTEXT)
    # a token is far shorter than 64 characters: tokenising a prefix is enough and fast
    ids = tok(text[: 64 * (tokens + context)], add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"the text gives no tokens with the tokenizer of {path} (is it empty?)")
    n = min(tokens, len(ids))
    context = min(context, n)
    B = -(-n // context)
    unknown = sum(i == tok.unk_token_id for i in ids[:n]) / n if tok.unk_token_id is not None else 0.0
    if unknown > UNKNOWN_TOKENS_WARN:
        warnings.warn(unknown_tokens_warning(unknown))
    return TokenBatch(torch.tensor((ids + ids)[: B * context]).reshape(B, context), n, unknown)


def unknown_tokens_warning(unknown: float) -> str:
    """What a text with this fraction of unknown tokens means for the probe (above ``UNKNOWN_TOKENS_WARN``)."""
    return (f"{unknown:.0%} of the probed tokens are the tokenizer's unknown token (more than "
            f"{UNKNOWN_TOKENS_WARN:.0%}): there the model sees one and the same token, not the text; probe a text that "
            "suits the tokenizer (--text FILE), or check that the tokenizer is the model's own")

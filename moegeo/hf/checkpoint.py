"""Loading a local Hugging Face checkpoint directory and tokenising a text with its own tokenizer;
nothing is ever downloaded (``local_files_only``)."""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass

import torch

from ..validate import MEMORY_FRACTION, available_memory, check_count, check_device

#: default number of tokens probed
MAX_TOKENS = 512
#: default tokens per sequence (fewer when the model's max_position_embeddings is smaller)
CONTEXT = 512
#: fraction of unknown tokens in the probed text above which the probe warns: a few rare words are
#: normal for a word-level vocabulary, more means the text does not suit the tokenizer
UNKNOWN_TOKENS_WARN = 0.05
#: names of a checkpoint's weights listed in an error before "and N more"
LISTED_NAMES = 6
#: the dtypes a checkpoint loads in, by name (``--dtype``); ``"auto"`` is its config's own ``dtype``
LOAD_DTYPES = ("auto", "bfloat16", "float16", "float32", "float64")


def load_dtype(config, dtype) -> torch.dtype:
    """The dtype a checkpoint of ``config`` loads in: ``dtype`` itself (a floating ``torch.dtype``
    or one of ``LOAD_DTYPES``), or for ``"auto"`` the config's ``dtype`` (``torch_dtype`` in
    older configs; float32 when it names none). ``ValueError`` for anything else."""
    if dtype == "auto":
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    if isinstance(dtype, str) and dtype in LOAD_DTYPES:
        dtype = getattr(torch, dtype)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype not in _DTYPE_NAMES:
        raise ValueError(f"dtype must be a torch float dtype or one of {', '.join(LOAD_DTYPES)}, got {dtype!r}")
    return dtype


_DTYPE_NAMES = {getattr(torch, name): name for name in LOAD_DTYPES[1:]}


def dtype_name(dtype: torch.dtype) -> str:
    """A float dtype as ``--dtype`` names it (``torch.bfloat16`` -> ``"bfloat16"``)."""
    return _DTYPE_NAMES.get(dtype) or str(dtype).removeprefix("torch.")


def meta_model(config):
    """The causal LM a ``config`` describes, on the meta device (shapes only, nothing allocated)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def estimate_bytes(config, *, dtype: torch.dtype = torch.float64) -> tuple[int, int]:
    """(parameter count, bytes in ``dtype``) of the causal LM a ``config`` describes, counted on the
    meta device (nothing is allocated)."""
    n = sum(p.numel() for p in meta_model(config).parameters())
    return n, n * torch.empty((), dtype=dtype).element_size()


def checkpoint_config(path: str | os.PathLike):
    """The ``transformers`` config of the local checkpoint directory ``path``. Raises
    ``FileNotFoundError`` naming ``path`` when it is not a directory or holds no ``config.json``."""
    from transformers import AutoConfig

    path = os.fspath(path)
    expected = (
        "expected a Hugging Face checkpoint directory saved with save_pretrained (config.json, the weights "
        "and the tokenizer)"
    )
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is not a directory; {expected}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        held = sorted(os.listdir(path))
        raise FileNotFoundError(
            f"{path} has no config.json; {expected}. It holds: "
            f"{', '.join(held[:8]) + (' ...' if len(held) > 8 else '') if held else 'nothing'}"
        )
    return AutoConfig.from_pretrained(path, local_files_only=True)


def load(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | str = torch.float64,
    device="cpu",
    device_map=None,
    max_memory: dict | None = None,
    offload_folder: str | os.PathLike | None = None,
    memory_fraction: float = MEMORY_FRACTION,
    allow_missing=(),
):
    """Load a local ``transformers`` causal-LM checkpoint directory for probing.

    ``dtype``: a floating ``torch.dtype`` or a name of ``LOAD_DTYPES`` (``"auto"``: the config's
    own, ``load_dtype``). ``device``: where the model runs (``cpu``, ``cuda``, ``cuda:N``;
    ``validate.check_device``). ``device_map`` (e.g. ``"auto"``), ``max_memory`` (device ->
    size, e.g. ``{"cpu": "2GiB"}``) and ``offload_folder``: ``transformers``/``accelerate``
    big-model loading, for a model larger than one device: what does not fit in ``max_memory``
    stays on disk in ``offload_folder`` and is brought in layer by layer during the forward
    pass (needs ``accelerate``, in the ``[hf]`` extra); ``device`` is then not used.

    Without ``device_map`` the size is checked from the config (``checkpoint_config``) first: a
    model whose parameters in ``dtype`` would take more than ``memory_fraction`` (a number in
    (0, 1]) of the available memory raises ``MemoryError`` with the estimate, before anything is
    materialised. Every
    ``*.safetensors`` file must parse (a truncated or garbage file is a ``ValueError`` naming
    it). Loads with ``experts_implementation="eager"`` (float64 needs it on the CPU) and never
    touches the network (``local_files_only``).

    The checkpoint must hold exactly the model's weights: a weight the model has and the
    checkpoint lacks (``transformers`` would initialise it at random, and the probe would read
    noise), a checkpoint tensor the model has no place for, or one of another shape is a
    ``ValueError`` naming them, unless every such name matches one of the ``fnmatch`` patterns
    of ``allow_missing`` (e.g. ``("model.layers.1.mlp.experts.*",)``; CLI ``--allow-missing``).
    """
    from transformers import AutoModelForCausalLM

    if not (
        isinstance(memory_fraction, (int, float)) and not isinstance(memory_fraction, bool) and 0 < memory_fraction <= 1
    ):
        raise ValueError(f"memory_fraction must be a number in (0, 1], got {memory_fraction!r}")
    patterns = (allow_missing,) if isinstance(allow_missing, str) else tuple(allow_missing)
    if not all(isinstance(p, str) and p for p in patterns):
        raise TypeError(f"allow_missing must be fnmatch patterns (non-empty strings), got {allow_missing!r}")
    config = checkpoint_config(path)
    dtype = load_dtype(config, dtype)
    placement = _placement(device, device_map, max_memory, offload_folder)
    if device_map is None:
        _check_fits(path, config, dtype, memory_fraction)
    _check_weight_files(path)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            os.fspath(path),
            dtype=dtype,
            experts_implementation="eager",
            local_files_only=True,
            output_loading_info=True,
            ignore_mismatched_sizes=True,
            **placement,
        )
    except Exception as err:  # safetensors' SafetensorError derives from Exception only
        if isinstance(err, ValueError) and "offload_folder" in str(err):
            raise ValueError(
                f"{path}: the model does not fit in max_memory {max_memory} and part of it must go to disk: "
                "give an offload folder (offload_folder=DIR, --offload-folder DIR)"
            ) from None
        if type(err).__name__ != "SafetensorError":
            raise
        raise ValueError(
            f"{path}: the weights cannot be read ({err}); the files are damaged or not safetensors: "
            "re-download or re-save the checkpoint"
        ) from None
    _check_loading_info(path, config, info, patterns)
    return model.eval()


def initialised(
    path: str | os.PathLike,
    *,
    seed: int = 0,
    dtype: torch.dtype | str = torch.float64,
    device="cpu",
    memory_fraction: float = MEMORY_FRACTION,
):
    """The architecture of the checkpoint at ``path`` freshly initialised (``transformers``' own
    initialisation of its config, on the CPU under ``torch.manual_seed(seed)``, so the same on
    every device; the global random state is restored afterwards), then moved to ``device``:
    the checkpoint's init control. Nothing is read but ``config.json``; ``dtype`` and the memory
    check are ``load``'s."""
    from transformers import AutoModelForCausalLM

    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2^63), got {seed!r}")
    config = checkpoint_config(path)
    dtype = load_dtype(config, dtype)
    device = check_device(device)
    _check_fits(path, config, dtype, memory_fraction)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, experts_implementation="eager")
    return model.to(device).eval()


def _placement(device, device_map, max_memory, offload_folder) -> dict:
    """``from_pretrained``'s placement arguments (``load``), checked before anything is read."""
    device = check_device(device)
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise ValueError("max_memory and offload_folder take effect with a device_map (e.g. device_map='auto')")
        return {} if device.type == "cpu" else {"device_map": {"": str(device)}}
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise ImportError(
            'a device_map (big-model loading, offload) needs accelerate: pip install -e ".[hf]"'
        ) from None
    if max_memory is not None and not isinstance(max_memory, dict):
        raise TypeError(f"max_memory must map devices to sizes, e.g. {{'cpu': '2GiB'}}, got {max_memory!r}")
    for key in max_memory or {}:
        if isinstance(key, int) and not isinstance(key, bool):
            check_device(f"cuda:{key}")
    if offload_folder is not None and os.path.exists(offload_folder) and not os.path.isdir(offload_folder):
        raise ValueError(f"offload_folder {os.fspath(offload_folder)} exists and is not a directory")
    out = {"device_map": device_map, "max_memory": max_memory}
    if offload_folder is not None:
        out["offload_folder"] = os.fspath(offload_folder)
    return out


def _check_fits(path, config, dtype: torch.dtype, memory_fraction: float) -> None:
    """``MemoryError`` when the model ``config`` describes would take more than ``memory_fraction``
    of the available memory in ``dtype``."""
    n, need = estimate_bytes(config, dtype=dtype)
    have = available_memory()
    if need > memory_fraction * have:
        raise MemoryError(
            f"{path}: the model ({config.model_type}, {n / 1e9:.2f} B parameters) needs about "
            f"{need / 2**30:.1f} GiB in {dtype} but only {have / 2**30:.1f} GiB of memory is available "
            f"(at most {memory_fraction:.0%} of it may hold the model); load it in a smaller dtype "
            "(e.g. dtype=torch.float32) or on a larger machine"
        )


def _check_weight_files(path) -> None:
    """Every ``*.safetensors`` file of ``path`` must open (header and data as it declares)."""
    from safetensors import SafetensorError, safe_open

    for name in sorted(f for f in os.listdir(path) if f.endswith(".safetensors")):
        file = os.path.join(os.fspath(path), name)
        try:
            with safe_open(file, "pt") as f:
                f.keys()
        except (SafetensorError, OSError) as err:
            raise ValueError(
                f"{file}: not a readable safetensors file ({err}); it is truncated or damaged: "
                "re-download or re-save the checkpoint"
            ) from None


def _names(names, limit: int = LISTED_NAMES) -> str:
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _check_loading_info(path, config, info: dict, patterns: tuple[str, ...]) -> None:
    """Refuse missing, unexpected or mismatched weights (``load``) not matched by ``patterns``."""
    import fnmatch

    def kept(names):
        return [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in patterns)]

    missing, unexpected = kept(info.get("missing_keys", ())), kept(info.get("unexpected_keys", ()))
    mismatched = {m[0]: m for m in info.get("mismatched_keys", ())}
    shapes = [
        f"{n} (checkpoint {tuple(mismatched[n][1])}, model {tuple(mismatched[n][2])})" for n in sorted(kept(mismatched))
    ]
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} weight(s) of the model missing from the checkpoint (they would be "
            f"initialised at random): {_names(missing)}"
        )
    if unexpected:
        problems.append(f"{len(unexpected)} checkpoint tensor(s) the model has no place for: {_names(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} tensor(s) of another shape: {_names(shapes)}")
    if problems:
        raise ValueError(
            f"{path}: the checkpoint does not match its {config.model_type} architecture: "
            f"{'; '.join(problems)}. The probe would read random weights; re-save the checkpoint, or "
            "accept these names explicitly with allow_missing=[PATTERN, ...] (--allow-missing PATTERN, "
            "fnmatch patterns)"
        )


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
    found = (
        f"tokenizer files: {', '.join(files)}"
        if files
        else "no tokenizer file (tokenizer.json, tokenizer_config.json, ...)"
    )
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
        raise ValueError(
            f"no usable tokenizer found in {path}: {found}{'; ' + problem if problem else ''}. The probe "
            "tokenises the text with the checkpoint's own tokenizer: save it with the model, e.g. "
            "tokenizer.save_pretrained(DIR)"
        )
    return tok


def tokenize(
    path: str | os.PathLike,
    *,
    text: str | None = None,
    text_file: str | os.PathLike | None = None,
    tokens: int = MAX_TOKENS,
    context: int | None = None,
    max_context: int | None = None,
) -> TokenBatch:
    """The first ``tokens`` tokens of a text by the checkpoint's own tokenizer in ``path``
    (``load_tokenizer``), in sequences of ``context`` tokens (default ``CONTEXT``, or
    ``max_context`` if smaller, at most the tokens probed; ``max_context`` defaults to the
    checkpoint config's ``max_position_embeddings``).

    The text is ``text`` (the text itself, a ``str``), or the UTF-8 file ``text_file``, or (neither
    given) the shipped WikiText-2 test split; not both. It is tokenised from its start, a prefix
    cut at a whitespace (never inside a word) grown until it gives enough tokens, or whole.

    All ``tokens`` are probed, none are dropped: the last sequence is completed with the text's
    following tokens (from its start again when the text ends), which are run but not probed (see
    ``TokenBatch``). A text shorter than ``tokens`` gives all its tokens (``n_tokens`` says how
    many) with a warning naming both numbers. Warns when more than ``UNKNOWN_TOKENS_WARN`` of them
    are the unknown token. Raises ``ValueError`` for ``tokens`` or ``context`` below 1,
    ``context`` above ``max_context`` (the model's ``max_position_embeddings``), no usable
    tokenizer, both ``text`` and ``text_file``, a file that is not UTF-8, or a text that gives no
    tokens; ``TypeError`` for a ``text`` that is not a ``str``.
    """
    from ..data.wikitext import shipped_text

    tokens = check_count("tokens", tokens)
    if max_context is None and os.path.isfile(os.path.join(os.fspath(path), "config.json")):
        max_context = getattr(checkpoint_config(path), "max_position_embeddings", None)
    if context is not None:
        context = check_count("context", context)
    if context is not None and max_context is not None and context > max_context:
        raise ValueError(f"context {context} exceeds the model's max_position_embeddings ({max_context})")
    text = read_text(text=text, text_file=text_file)
    tok = load_tokenizer(path)
    text = shipped_text("test") if text is None else text
    context = context or min(CONTEXT, max_context or CONTEXT)
    ids = _leading_ids(tok, text, tokens + context)
    if not ids:
        raise ValueError(f"the text gives no tokens with the tokenizer of {path} (is it empty?)")
    n = min(tokens, len(ids))
    if n < tokens:
        warnings.warn(f"the text has only {n} tokens: all {n} are probed, not the {tokens} asked for", stacklevel=2)
    context = min(context, n)
    B = -(-n // context)
    unknown = sum(i == tok.unk_token_id for i in ids[:n]) / n if tok.unk_token_id is not None else 0.0
    if unknown > UNKNOWN_TOKENS_WARN:
        warnings.warn(unknown_tokens_warning(unknown), stacklevel=2)
    return TokenBatch(torch.tensor((ids + ids)[: B * context]).reshape(B, context), n, unknown)


def read_text(*, text: str | None = None, text_file: str | os.PathLike | None = None) -> str | None:
    """The text to probe: ``text`` itself, or the content of the UTF-8 file ``text_file``, or
    None when neither is given (``ValueError`` for both, or a file that is not UTF-8;
    ``FileNotFoundError`` for a missing file; ``TypeError`` for a ``text`` that is not a ``str``)."""
    if text is not None and text_file is not None:
        raise ValueError("give the text as text= (the text itself) or text_file= (a path), not both")
    if text is not None and not isinstance(text, str):
        raise TypeError(f"text must be the text itself, a str, got {type(text).__name__}; pass a path as text_file=")
    if text_file is None:
        return text
    try:
        with open(text_file, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as err:
        raise ValueError(f"{text_file}: not UTF-8 text ({err}); expected a UTF-8 text file") from None
    except IsADirectoryError:
        raise ValueError(f"{text_file} is a directory; expected a UTF-8 text file") from None


def _leading_ids(tok, text: str, need: int) -> list[int]:
    """Token ids of the start of ``text``: at least ``need`` of them, or all of the text. A prefix
    is cut just before a whitespace character (a word is never cut), starting at 64 characters per
    token and doubled until it gives more than ``need`` tokens; its last token is then dropped (the
    boundary's neighbour may tokenise differently in the whole text)."""
    end = 64 * need
    while True:
        cut = _before_whitespace(text, end) if end < len(text) else len(text)
        if cut is None:  # no whitespace just before ``end``: a longer prefix
            end *= 2
            continue
        ids = tok(text[:cut], add_special_tokens=False)["input_ids"]
        if cut == len(text):
            return ids
        if len(ids) > need:
            return ids[:-1]
        end *= 2


def _before_whitespace(text: str, end: int, window: int = 4096) -> int | None:
    """The largest i <= end with text[i] whitespace, looked for in the ``window`` characters
    before ``end`` (a prefix text[:i] then ends at a word's end); None when there is none."""
    start = max(0, end - window)
    found = [m.start() for m in re.finditer(r"\s", text[start : end + 1])]
    return start + found[-1] if found else None


def unknown_tokens_warning(unknown: float) -> str:
    """What a text with this fraction of unknown tokens means for the probe (above ``UNKNOWN_TOKENS_WARN``)."""
    return (
        f"{unknown:.0%} of the probed tokens are the tokenizer's unknown token (more than "
        f"{UNKNOWN_TOKENS_WARN:.0%}): there the model sees one and the same token, not the text; probe a text that "
        "suits the tokenizer (--text-file FILE), or check that the tokenizer is the model's own"
    )

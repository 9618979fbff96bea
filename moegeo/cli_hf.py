"""``moegeo claims --hf-model DIR``: the asymmetry paper's pretrained-model claims on one local
Hugging Face checkpoint, alone (seconds after its probe), with the same engine and the same
family declaration as ``pytest claims/ --hf-model DIR``; ``--baseline init`` also probes the same
architecture freshly initialised and tests every claim on it as its init control (a claim that
holds there too is BY CONSTRUCTION)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import warnings

import pandas as pd

from .cli_common import (
    RUN_ERRORS,
    _baseline,
    _baseline_args,
    _check_outputs,
    _fail,
    _loading,
    _loading_args,
    _positive_int,
)

#: the probe groups the pretrained-model claims read (cross-expert cosines of J̄_e, the PCA
#: subspaces): the per-token Jacobian spectra, most of a large layer's cost, are not computed
CLAIM_PROBES = ("mean", "pca")


def claims_main(argv) -> int:
    """``moegeo claims --hf-model DIR``: probe a local checkpoint and decide the asymmetry paper's
    pretrained-model claims on it (layers as units); ``--baseline init`` adds its init control."""
    ap = argparse.ArgumentParser(prog="moegeo claims", description=claims_main.__doc__)
    ap.add_argument(
        "--hf-model",
        required=True,
        metavar="DIR",
        help="a local checkpoint directory (config.json, weights and tokenizer, as save_pretrained writes)",
    )
    ap.add_argument(
        "--tokens", type=_positive_int, default=512, help="tokens of the text fed to the model (default 512)"
    )
    ap.add_argument(
        "--text-file",
        "--text",
        dest="text_file",
        default=None,
        metavar="FILE",
        help="a UTF-8 text file (default: the shipped WikiText-2 test split)",
    )
    _loading_args(ap)
    _baseline_args(ap, "as the claims' init control")
    ap.add_argument("--csv", help="also write every reading's verdict to this CSV file")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if not os.path.isfile(os.path.join(args.hf_model, "config.json")):
        ap.error(f"--hf-model: {args.hf_model} is not a Hugging Face checkpoint directory (no config.json)")
    if args.text_file is not None and not os.path.isfile(args.text_file):
        ap.error(f"--text-file: {args.text_file} is not a file; expected a UTF-8 text file")
    _check_outputs(ap, files={"--csv": args.csv})
    try:
        import transformers  # noqa: F401
    except ImportError:
        ap.error('the claims on a checkpoint need transformers: pip install -e ".[hf]"')
    loading, base = _loading(ap, args), _baseline(ap, args)

    from . import hf
    from .claims import Results, evaluate, geometric_asymmetry
    from .report.markdown import write_atomic
    from .report.papers import verdict_csv

    baseline = base["baseline"] == "init"
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = lambda message, *_, **__: print(f"{ap.prog}: warning: {message}", file=sys.stderr)
            df = hf.probe(
                args.hf_model,
                text_file=args.text_file,
                tokens=args.tokens,
                progress=False if args.quiet else None,
                probes=CLAIM_PROBES,
                **base,
                **loading,
            )
            frame = geometric_asymmetry.layers_as_seeds(df)
            claims = geometric_asymmetry.PRETRAINED_CLAIMS
            if baseline:  # the declared note: the checkpoint's own controls come from --baseline
                claims = tuple(dataclasses.replace(c, controls=("init",)) for c in claims)
            verdicts = evaluate(Results({"hf": frame}), claims)
    except RUN_ERRORS as err:
        return _fail(ap.prog, err)
    if args.csv:
        write_atomic(args.csv, verdict_csv(verdicts, controls=("init",) if baseline else ()))
    prim = verdicts[verdicts.primary]
    n = frame.seed.nunique()
    tokens = int(df.loc[df.metric == "n_tokens", "value"].iloc[0])
    print(
        f"{ap.prog}: {args.hf_model}: {n} MoE layer(s) as units, {tokens} tokens, "
        f"{time.perf_counter() - t0:.1f} s" + (f"; init control: seed {base['baseline_seed']}" if baseline else "")
    )
    table = pd.DataFrame(
        {
            "claim": prim.claim,
            "verdict": prim.verdict,
            **({"control init": prim["control_init"], "effect minus init": prim["delta_init"]} if baseline else {}),
        }
    ).set_index("claim")
    print(table.to_string())
    for row in prim.itertuples():
        print(f"\n{row.message}")
    if (prim.verdict == "TOO FEW SEEDS").any():
        print(f"\n{too_few_units(n, int(prim.M.max()))}")
    if args.csv:
        print(f"\nevery reading's verdict written to {args.csv}")
    return 0


def too_few_units(n: int, M: int) -> str:
    """What TOO FEW SEEDS means on one checkpoint: its unit, how many it has and how many a
    verdict needs (``claims.sensitivity.min_seeds``)."""
    from .claims.sensitivity import min_seeds

    need = min_seeds(M)
    return (
        f"TOO FEW SEEDS here: the unit of these claims is the MoE layer (the 'seeds' of the messages are "
        f"this checkpoint's MoE layers), and it has {n}. A family of M = {M} hypotheses needs at least {need} "
        f"units for even a unanimous sign test to pass Holm's first step (2^-n <= 0.05 / M): a model with "
        f"{need} or more MoE layers can be decided (Mixtral-8x7B has 32, OLMoE-1B-7B 16). Expert pairs within a "
        f"layer are not offered as a second unit: a layer's E(E-1)/2 pairs share its E experts (each expert is in "
        f"E-1 of them) and all of its tokens, so they are not independent, and a sign test over them would count "
        f"the same evidence many times; every claim's statistic already averages over the pairs of each layer."
    )

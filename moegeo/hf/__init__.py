"""Probes on Hugging Face ``transformers`` MoE models (the ``[hf]`` extra).

A data source, not a new probe: for every MoE layer of a causal LM this module captures the
tensors the probes take (the hidden states entering the experts, the routing weights as the
model applies them, the expert weights, the expert outputs, the shared experts' contribution
and the block's own output) and runs the probes every setting shares
(``moegeo.rows.expert_geometry_rows``) into the tidy frame with ``setting="hf"``.

How a layer is read (transformers >= 5):

- **Detection is structural.** An experts module is any module holding 3-D ``gate_up_proj`` and
  ``down_proj`` parameters (``(E, 2h, d)`` and ``(E, d, h)``, or both transposed); its parent
  module is the MoE block. Its layout flags (``is_transposed``, ``is_concatenated``,
  ``has_bias``, ``has_gate``, ``has_post_expert_norm``, set by ``transformers``'
  ``@use_experts_implementation``) say how to read the weights.
- **Routing is captured, never recomputed.** The block calls ``experts(hidden_states,
  top_k_index, top_k_weights)``; a forward pre-hook records that call, so ``g`` is the routing
  exactly as applied, whatever the router (softmax, sigmoid, group-limited, bias-corrected,
  renormalised or not, scaled). Router outputs named ``router_logits`` are never used (some
  versions returned probabilities under that name).
- **Every capture checks itself.** ``sum_e g_e f_e(x)``, with ``f_e`` the model's own expert
  forward (the experts module called with every token sent to expert e at weight 1), must equal
  the experts module's output, and the block's output must equal ``scale * routed + shared``,
  where ``shared`` is the block's output with the routed experts zeroed (the shared experts of
  Qwen2-MoE, with their sigmoid gate, or DeepSeek; absent elsewhere) and ``scale`` a constant
  (1 unless the block scales the experts' sum, e.g. Laguna; it is then folded into ``g``). A
  layer that fails either check raises ``ValueError`` instead of being probed wrongly.
- **Jacobians.** SiLU-gated experts in the default layout (Mixtral, Qwen-MoE, OLMoE, DeepSeek
  and most others) use the closed form ``probes.swiglu_jacobians``. Any other gate (GPT-OSS:
  interleaved gate/up, clamps, ``alpha``, ``up + 1``, biases; any custom ``_apply_gate`` or
  activation) takes autograd through the model's own expert forward, so it follows the model's
  code instead of a re-implementation that could drift from it. The shared experts' Jacobians
  are always autograd through the block.
- **Large models.** Above ``MAX_BYTES`` for the ``(E, N, d, d)`` per-point Jacobians of a layer
  (Mixtral, E = 8, d = 4096: 1 GiB per token) the per-point spectra are not
  materialised: sigma_1 of every J_e(x_i) comes from Lanczos on a matrix-free JVP/VJP operator
  (``probes.swiglu_jacobian_operator``), the mean Jacobian J̄_e in closed form
  (``probes.swiglu_mean_jacobian``; E d^2 numbers), and the PCA sites whose covariances would
  exceed ``MAX_BYTES`` are skipped with a warning.

Probe in float64 (``load`` does): transformers' default ``grouped_mm`` experts kernel rejects
float64 on the CPU, so ``load`` and ``probe_model`` use the ``"eager"`` experts implementation.


Modules: ``layers`` (finding the layers, their weights, the checked capture), ``jacobians``
(Jacobians through the model's own modules), ``checkpoint`` (loading and tokenising) and ``rows``
(the rows of the tidy frame).
"""

from .checkpoint import (
    CONTEXT,
    LOAD_DTYPES,
    MAX_TOKENS,
    MEMORY_FRACTION,
    UNKNOWN_TOKENS_WARN,
    TokenBatch,
    available_memory,
    checkpoint_config,
    dtype_name,
    estimate_bytes,
    initialised,
    load,
    load_dtype,
    load_tokenizer,
    meta_model,
    read_text,
    tokenize,
    unknown_tokens_warning,
)
from .jacobians import tokenwise_jacobians, tokenwise_operator
from .large import (
    LANCZOS_BLOCK,
    LANCZOS_STEPS,
    LANCZOS_TOL,
    LANCZOS_TOL_FLOAT32,
    MEAN_SPECTRUM_K,
    SPECTRUM_KRYLOV,
)
from .layers import (
    ExpertWeights,
    MoECapture,
    MoELayer,
    capture,
    captures,
    check_layers,
    expert_forward,
    expert_weights,
    moe_layers,
    shared_forward,
)
from .rows import (
    DEFAULT_PROBES,
    FLOAT64_MAX_D,
    MAX_BYTES,
    PROBES,
    SHARED_EXPERT,
    ProbeEstimate,
    default_probe_dtype,
    estimate_probe,
    gemm_rate,
    layer_rows,
    probe,
    probe_model,
)

__all__ = [name for name in dir() if not name.startswith("_")]

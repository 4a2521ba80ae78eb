"""The benchmark's cases: drope_lens's side, the bare forwards, and the study's way, on the same tokens.

A case builder takes the loaded :class:`Models` and a :class:`Workload` and returns a
:class:`CaseSpec`: named sections (callables) that :mod:`benchmarks.run` times and measures one by
one, in a fresh process per case.

Sections:

* ``drope_lens``           the analysis as a drope_lens user runs it (batched, hooks reduce as they go);
* ``tl_forward``           bare HookedTransformer forwards (logits) over the same batches;
* ``tl_forward_nologits``  the same without the unembedding (``return_type=None``), i.e. exactly the
                           layers an analysis that needs no logits runs;
* ``hf_forward``           bare Hugging Face forwards (logits) over the same padded batches;
* ``study_way``            :mod:`benchmarks.study_way`: HF, batch 1, full-output hooks, a pass per experiment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

MODEL_KINDS = ("embedded", "tiny", "llama2-7b-shaped", "llama2-shaped-tiny")
#: random-weight, tokenizer-less Llama-2-shaped pairs: the GPU run and its CPU rehearsal (same code path)
LLAMA2_KINDS = ("llama2-7b-shaped", "llama2-shaped-tiny")

#: Llama-2-7B shapes (HF ``LlamaConfig`` names).
#: n_ctx is 8192 (Llama-2 itself: 4096) so the GPU run can time 8k-token inputs, past the RoPE training window.
LLAMA2_7B_SHAPE = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32000,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
)
#: The same architecture, tiny: what the tests use to exercise the GPU path on CPU.
LLAMA2_TINY_SHAPE = dict(
    hidden_size=64,
    intermediate_size=172,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    vocab_size=500,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
)


# ------------------------------------------------------------------------------------------- models
@dataclass
class Models:
    """The TL models of the pair (``rope``, ``drope``), their HF twins (built on demand) and a tokenizer."""

    kind: str
    device: str
    tl: dict[str, Any]
    tokenizer: Any
    hf_factory: Callable[[str, str], Any]
    bos_id: int = 1
    _hf: dict = field(default_factory=dict)

    def hf(self, role: str = "rope", attn: str = "sdpa"):
        key = (role, attn)
        if key not in self._hf:
            self._hf[key] = self.hf_factory(role, attn)
        return self._hf[key]

    def params_mb(self, role: str = "rope") -> float:
        m = self.tl[role]
        return sum(p.numel() * p.element_size() for p in m.parameters()) / 2**20


def _hf_nope(hf):
    from drope_lens.loading.parity import IdentityRotary

    hf.model.rotary_emb = IdentityRotary(hf.model.rotary_emb)
    return hf


def load_models(kind: str, device: str = "cpu") -> Models:
    """Load the pair for ``kind`` (``embedded``, ``tiny``, ``llama2-7b-shaped``)."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"Unknown model {kind!r}; choose one of {MODEL_KINDS}.")
    if kind == "llama2-7b-shaped":
        return load_llama2_shaped(device)
    if kind == "llama2-shaped-tiny":
        return load_llama2_shaped(device, LLAMA2_TINY_SHAPE, allow_cpu=True)
    if kind == "tiny":
        from drope_lens import testing as helpers
        from drope_lens.loading import hooked_from_hf, to_nope

        tok = helpers.tiny_tokenizer()

        def planted_hf():
            # a few large Q/K channels, so detection and disruption have something to find
            hf = helpers.tiny_llama()
            with torch.no_grad():
                for layer, (proj, row) in enumerate([("q_proj", 5), ("k_proj", 7)]):
                    getattr(hf.model.layers[layer].self_attn, proj).weight[row] *= 40.0
            return hf

        rope = hooked_from_hf(planted_hf(), tok, device=device)

        def factory(role, attn):
            hf = planted_hf()
            hf.config._attn_implementation = attn
            hf = hf.to(device).eval()
            return _hf_nope(hf) if role == "drope" else hf

        return Models(kind, device, {"rope": rope, "drope": to_nope(rope)}, tok, factory, bos_id=tok.bos_token_id)

    import drope_lens as dl
    from drope_lens.loading import embedded_checkpoint

    pair = dl.load_pair(device=device)

    def factory(role, attn):
        from transformers import AutoModelForCausalLM

        hf = (
            AutoModelForCausalLM.from_pretrained(
                str(embedded_checkpoint()), dtype=torch.float32, attn_implementation=attn
            )
            .to(device)
            .eval()
        )
        return _hf_nope(hf) if role == "drope" else hf

    return Models(
        kind,
        device,
        {"rope": pair.rope, "drope": pair.drope},
        pair.tokenizer,
        factory,
        bos_id=pair.tokenizer.bos_token_id,
    )


def build_llama2_shaped(shape: dict, device: str, dtype: torch.dtype = torch.bfloat16):
    """An HF ``LlamaForCausalLM`` with the given shapes and random weights, built directly on ``device``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            hf = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return hf.to(dtype).eval()


def require_cuda(device: str) -> None:
    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        raise RuntimeError(
            "--model llama2-7b-shaped needs a CUDA GPU (about 40 GB of GPU memory: two 13.5 GB bf16 "
            "HookedTransformers plus an HF copy for the study's way). This machine has "
            f"{'no usable CUDA device' if not torch.cuda.is_available() else 'CUDA, but --device ' + str(device)}. "
            "Run it on a GPU machine with --device cuda, or use --model embedded / tiny on CPU."
        )


def load_llama2_shaped(device: str, shape: Optional[dict] = None, *, allow_cpu: bool = False) -> Models:
    """Llama-2-7B-shaped random bf16 pair (RoPE + its NoPE twin) on the GPU; no download, no tokenizer."""
    if not allow_cpu:
        require_cuda(device)
    from drope_lens.loading import hooked_from_hf, to_nope

    shape = dict(shape or LLAMA2_7B_SHAPE)
    hf = build_llama2_shaped(shape, device)
    with torch.no_grad():  # a few large Q/K channels, so disruption has something to zero (as for "tiny")
        for layer, (proj, row) in enumerate([("q_proj", 5), ("k_proj", 7)]):
            getattr(hf.model.layers[layer].self_attn, proj).weight[row] *= 40.0
    rope = hooked_from_hf(
        hf,
        None,
        model_name="llama2-7b-shaped-random",
        dtype=torch.bfloat16,
        device=device,
        n_ctx=shape["max_position_embeddings"],
    )
    keep = {"hf": hf}

    def factory(role, attn):
        if role != "rope":
            raise ValueError("the llama2-7b-shaped study baseline runs on the RoPE model only")
        m = keep["hf"]
        m.config._attn_implementation = attn
        return m

    kind = "llama2-7b-shaped" if shape == LLAMA2_7B_SHAPE else "llama2-shaped-tiny"
    return Models(kind, device, {"rope": rope, "drope": to_nope(rope)}, None, factory, bos_id=1)


# ------------------------------------------------------------------------------------------- workload
@dataclass
class Workload:
    """The same token ids for every section: ``batch`` (right-padded, here all rows full) and ``texts``."""

    batch: Any  # drope_lens TokenBatch
    texts: Optional[list[str]]
    seq_len: int
    batch_size: int

    @property
    def n_texts(self) -> int:
        return len(self.batch)

    def rows(self) -> list[torch.Tensor]:
        """Unpadded id rows (what the study feeds its model one at a time)."""
        return [self.batch.tokens[i, : int(n)] for i, n in enumerate(self.batch.lengths)]

    def describe(self) -> str:
        return f"{self.n_texts} × {self.seq_len} tok"


def _source_words(models: Models) -> str:
    if models.kind == "tiny":
        from drope_lens.testing import TINY_TEXTS

        return " . ".join(TINY_TEXTS)
    from drope_lens.data.texts import builtin_texts

    return "\n\n".join(builtin_texts())


def make_workload(models: Models, n_texts: int, seq_len: int, batch_size: int = 8) -> Workload:
    """``n_texts`` texts of exactly ``seq_len`` tokens (BOS included), each starting at a different place
    of the built-in texts (repeated as needed), tokenized the drope_lens way (BOS prepended)."""
    from drope_lens.loading import TokenBatch, encode

    if models.tokenizer is None:  # random-weight model: random ids, BOS first
        g = torch.Generator().manual_seed(0)
        vocab = models.tl["rope"].cfg.d_vocab
        tokens = torch.randint(3, vocab, (n_texts, seq_len), generator=g)
        tokens[:, 0] = models.bos_id
        return Workload(TokenBatch(tokens, torch.full((n_texts,), seq_len)), None, seq_len, batch_size)
    source = _source_words(models)
    words = source.split(" ")
    texts = []
    for i in range(n_texts):
        start = (i * 97) % max(1, len(words))
        rotated = " ".join(words[start:] + words[:start])
        text = rotated
        while len(models.tokenizer(text, add_special_tokens=False)["input_ids"]) < seq_len:
            text = text + "\n\n" + rotated
        texts.append(text)
    batch = encode(models.tokenizer, texts, max_length=seq_len)
    return Workload(batch, texts, seq_len, batch_size)


# ------------------------------------------------------------------------------------------- sections
@dataclass
class Section:
    name: str
    fn: Callable[[], Any]
    passes: int = 1  # forward passes over the workload (per model)
    max_repeat: Optional[int] = None  # heavy sections: fewer repeats


@dataclass
class CaseSpec:
    case: str
    sections: list[Section]
    analysis_needs_logits: bool
    label: str = ""
    meta: dict = field(default_factory=dict)


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def tl_forwards(models: Models, wl: Workload, roles: Sequence[str], *, logits: bool) -> Callable[[], None]:
    @torch.no_grad()
    def run():
        for role in roles:
            m = models.tl[role]
            for _, sub in wl.batch.batches(wl.batch_size):
                out = m(sub.tokens.to(m.cfg.device), return_type="logits" if logits else None)
                del out
        _sync(models.device)

    return run


def hf_forwards(
    models: Models, wl: Workload, roles: Sequence[str], attn: str = "sdpa", *, logits: bool = True
) -> Callable[[], None]:
    """Bare HF forwards over the same batches; ``logits=False``: the decoder ``hf.model`` only (no LM head)."""

    @torch.no_grad()
    def run():
        for role in roles:
            hf = models.hf(role, attn)
            forward = hf if logits else hf.model
            for _, sub in wl.batch.batches(wl.batch_size):
                out = forward(input_ids=sub.tokens.to(hf.device), attention_mask=sub.mask.long().to(hf.device))
                del out
        _sync(models.device)

    return run


def each_role(models: Models, roles: Sequence[str], run_one: Callable[[Any], Any]) -> Callable[[], None]:
    """A section: ``run_one(model)`` on the TL model of each role, then a device sync."""

    def run():
        for role in roles:
            run_one(models.tl[role])
        _sync(models.device)

    return run


def each_hf(
    models: Models, roles: Sequence[str], run_one: Callable[[Any], Any], attn: str = "sdpa"
) -> Callable[[], None]:
    """A section: ``run_one(hf)`` on the HF model of each role that has one (:func:`_hf_roles`), then a sync."""

    def run():
        for role in _hf_roles(models, roles):
            run_one(models.hf(role, attn))
        _sync(models.device)

    return run


def _bare_sections(models, wl, roles, hf_roles=None, attn="sdpa") -> list[Section]:
    hf_roles = _hf_roles(models, roles) if hf_roles is None else hf_roles
    out = [
        Section("tl_forward", tl_forwards(models, wl, roles, logits=True)),
        Section("tl_forward_nologits", tl_forwards(models, wl, roles, logits=False)),
    ]
    if hf_roles:
        out.append(Section("hf_forward", hf_forwards(models, wl, hf_roles, attn)))
    return out


def case_detection(models: Models, wl: Workload, roles: Sequence[str], opts: dict) -> CaseSpec:
    from benchmarks import study_way
    from drope_lens.analysis.massive import detect_massive

    ours = each_role(models, roles, lambda m: detect_massive(m, wl.batch, batch_size=wl.batch_size))
    study = each_hf(models, roles, lambda hf: study_way.detection(hf, wl.rows()))
    secs = [Section("drope_lens", ours)] + _bare_sections(models, wl, roles, _hf_roles(models, roles))
    if _hf_roles(models, roles):
        secs.append(Section("study_way", study))
    return CaseSpec("detection", secs, analysis_needs_logits=False, label="Q/K/V massive values")


def _hf_roles(models: Models, roles: Sequence[str]) -> list[str]:
    return [r for r in roles if not (models.kind in LLAMA2_KINDS and r != "rope")]


def case_disruption(models: Models, wl: Workload, roles: Sequence[str], opts: dict) -> CaseSpec:
    from benchmarks import study_way
    from drope_lens.analysis.disruption import run_disruption

    n_seeds = int(opts.get("seeds", 10))
    inputs = wl.texts if wl.texts is not None else wl.batch  # random-weight models: token ids

    def disrupt(model):
        run_disruption(
            model,
            identify_texts=inputs,
            eval_on_identify=True,
            n_seeds=n_seeds,
            batch_size=wl.batch_size,
            max_length=wl.seq_len,
            n_resamples=999,
        )

    ours = each_role(models, roles, disrupt)

    def study():
        rows = wl.rows()
        for role in roles:
            study_way.disruption(models.hf(role), rows, rows, seeds=list(range(42, 42 + n_seeds)))
        _sync(models.device)

    secs = [Section("drope_lens", ours, passes=n_seeds + 3, max_repeat=opts.get("heavy_repeat"))]
    secs += _bare_sections(models, wl, roles)
    secs.append(Section("study_way", study, passes=3 * n_seeds + 1, max_repeat=1))
    return CaseSpec("disruption", secs, analysis_needs_logits=True, label=f"{n_seeds} seeds", meta={"seeds": n_seeds})


def case_phase(models: Models, wl: Workload, roles: Sequence[str], opts: dict) -> CaseSpec:
    from benchmarks import study_way
    from drope_lens.analysis.profile_pass import phase_profile

    ours = each_role(models, roles, lambda m: phase_profile(m, wl.batch, batch_size=wl.batch_size))
    study = each_hf(models, roles, lambda hf: study_way.phase(hf, wl.rows()), attn="eager")
    secs = [Section("drope_lens", ours)] + _bare_sections(models, wl, roles, _hf_roles(models, roles))
    secs.append(Section("study_way", study, passes=2))
    return CaseSpec("phase", secs, analysis_needs_logits=False, label="BOS norm/ratio, entropy, sinks")


def sink_rates(model, batch, batch_size: int, tau: Optional[float] = None) -> torch.Tensor:
    """Sink rate per text and layer from ``hook_pattern`` with :mod:`drope_lens.analysis.sinks`
    (``tau``: its ``DEFAULT_TAU``)."""
    from drope_lens.analysis import sinks
    from drope_lens.loading.forward import forward_batch

    tau = sinks.DEFAULT_TAU if tau is None else tau

    out = torch.zeros(len(batch), model.cfg.n_layers, dtype=torch.float64)
    state: dict = {}

    def hook(pattern, hook):
        lengths = state["lengths"].to(pattern.device)
        scores = sinks.sink_scores(pattern, lengths)
        state["rates"][hook.layer()] = sinks.sink_rate(scores, tau).cpu()

    hooks = [(f"blocks.{li}.attn.hook_pattern", hook) for li in range(model.cfg.n_layers)]
    with torch.no_grad():
        for idx, sub in batch.batches(batch_size):
            state.update(lengths=sub.lengths, rates={})
            with model.hooks(fwd_hooks=hooks):
                forward_batch(model, sub, return_type=None)
            out[idx] = torch.stack([state["rates"][li] for li in range(model.cfg.n_layers)], 1)
    return out


def case_sinks(models: Models, wl: Workload, roles: Sequence[str], opts: dict) -> CaseSpec:
    from benchmarks import study_way

    ours = each_role(models, roles, lambda m: sink_rates(m, wl.batch, wl.batch_size))
    study = each_hf(models, roles, lambda hf: study_way.sinks(hf, wl.rows()))
    secs = [Section("drope_lens", ours)] + _bare_sections(models, wl, roles, _hf_roles(models, roles))
    secs.append(Section("study_way", study))
    return CaseSpec("sinks", secs, analysis_needs_logits=False, label="hook_pattern sink rates")


CASE_BUILDERS = {
    "detection": case_detection,
    "disruption": case_disruption,
    "phase": case_phase,
    "sinks": case_sinks,
}


def task_workload(models: Models, opts: dict):
    """drope_lens task datasets (built once) and the same prompts as token ids for the study's way."""
    from drope_lens.loading import encode
    from drope_lens.tasks.runner import build_datasets
    from drope_lens.tasks.scoring import format_prompt
    from drope_lens.tasks.sizes import scaled_n

    n = opts.get("task_n") or scaled_n(16)
    datasets = build_datasets(models.tokenizer, n=n, seed=0, passkey_lengths=(256,), n_ctx=models.tl["rope"].cfg.n_ctx)
    kinds = {"cities": "yes_no", "sports": "yes_no", "sentiment": "sentiment", "passkey": "passkey"}
    study_items = []
    for ds in datasets:
        prompts = [format_prompt(models.tokenizer, it.text) for it in ds.items]
        batch = encode(models.tokenizer, prompts)
        rows = [batch.tokens[i, : int(batch.lengths[i])] for i in range(len(batch))]
        study_items.append((kinds.get(ds.name, "yes_no"), list(zip(rows, [it.answer for it in ds.items], strict=True))))
    return datasets, study_items


def case_tasks(models: Models, wl: Workload, roles: Sequence[str], opts: dict) -> CaseSpec:
    from benchmarks import study_way
    from drope_lens.tasks.runner import run_tasks

    if models.tokenizer is None:
        raise RuntimeError("tasks need a tokenizer; not available for a random-weight model")
    datasets, study_items = task_workload(models, opts)
    n_items = sum(len(d) for d in datasets)

    def tasks_scored(scoring):
        return each_role(
            models,
            roles,
            lambda m: run_tasks(m, tasks=datasets, conditions=("baseline",), scoring=scoring, batch_size=wl.batch_size),
        )

    ours, ours_study_scoring = tasks_scored("logprob"), tasks_scored("study")

    def study():
        for role in roles:
            hf = models.hf(role)
            for kind, items in study_items:
                study_way.score_task(hf, models.tokenizer, items, kind)
        _sync(models.device)

    # the bare forwards: one forward over every prompt (the least any scoring can do)
    from drope_lens.loading import encode
    from drope_lens.tasks.scoring import format_prompt

    prompts = [format_prompt(models.tokenizer, it.text) for d in datasets for it in d.items]
    pwl = Workload(encode(models.tokenizer, prompts), None, 0, wl.batch_size)
    secs = [Section("drope_lens", ours, max_repeat=opts.get("heavy_repeat"))]
    secs += _bare_sections(models, pwl, roles)
    secs.append(Section("drope_lens_generate20", ours_study_scoring, max_repeat=1))
    secs.append(Section("study_way", study, max_repeat=1))
    counts = {d.name: len(d) for d in datasets}
    return CaseSpec(
        "tasks",
        secs,
        analysis_needs_logits=True,
        label="baseline condition, " + ", ".join(f"{k} {v}" for k, v in counts.items()),
        meta={"items": counts, "n_items": n_items, "workload": f"{n_items} prompts"},
    )


CASE_BUILDERS["tasks"] = case_tasks

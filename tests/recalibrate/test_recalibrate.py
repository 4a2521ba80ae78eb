"""Recalibration (HF Trainer) on tiny random Llama models: loss, RoPE off, checkpoint round trips, resume, splits."""

from __future__ import annotations

import json
import math

import pytest
import torch

from drope_lens.testing import tiny_llama, tiny_tokenizer

TOY = ("one two three four five six seven eight nine ten . " * 40).strip()


@pytest.fixture(scope="module")
def rope_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("rope")
    tiny_llama(seed=3).save_pretrained(str(path))
    tiny_tokenizer().save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    for i in range(6):
        (d / f"doc{i}.txt").write_text(TOY)
    return [str(d)]


def _recipe(**kw):
    from drope_lens.recalibrate import Recipe

    base = dict(
        lr=3e-3,
        warmup_steps=2,
        schedule="constant",
        seq_len=32,
        batch_size=4,
        max_steps=4,
        save_every=2,
        heldout_blocks=4,
        seed=0,
    )
    base.update(kw)
    return Recipe(**base)


def _ids():
    from drope_lens.loading import encode

    return encode(tiny_tokenizer(), ["one two three four five six seven eight nine ten . one two three"]).tokens


def test_loss_falls_on_a_learnable_corpus(rope_dir, toy_data, tmp_path):
    from drope_lens.recalibrate import recalibrate

    r = recalibrate(rope_dir, _recipe(max_steps=30, save_every=30), tmp_path / "run", data=toy_data, progress=False)
    assert r.finished and r.steps_done == 30 and r.tokens_seen == 30 * 32 * 4
    first, last = r.losses[0], sum(r.losses[-5:]) / 5
    assert last < 0.3 * first, (first, last)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, 31)) and log[-1]["tokens"] == r.tokens_seen
    assert [c["step"] for c in r.checkpoints] == [0, 30]


def test_rope_is_off_in_training_and_in_the_saved_checkpoint(rope_dir, toy_data, tmp_path):
    import drope_lens as dl
    from drope_lens.recalibrate import recalibrate
    from drope_lens.recalibrate.model import drope_training_model

    hf, _ = drope_training_model(rope_dir, "nope")
    seen = []
    handle = hf.model.layers[0].register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["position_embeddings"]), with_kwargs=True
    )
    hf.train()
    hf(input_ids=_ids(), labels=_ids()).loss.backward()
    handle.remove()
    cos, sin = seen[0]
    assert torch.equal(cos, torch.ones_like(cos)) and torch.equal(sin, torch.zeros_like(sin))

    r = recalibrate(rope_dir, _recipe(max_steps=2), tmp_path / "run", data=toy_data, progress=False)
    model = dl.load_hooked(r.final)
    assert (
        model.cfg.is_nope
        and json.loads((tmp_path / "run" / "checkpoint-2" / "config.json").read_text())["model_type"] == "llama_drope"
    )
    assert "recalibrated on 256 tokens" in model.cfg.describe()
    _, cache = model.run_with_cache(_ids())
    for layer in range(model.cfg.n_layers):
        assert torch.equal(cache[f"blocks.{layer}.attn.hook_rot_q"], cache[f"blocks.{layer}.attn.hook_q"])
        assert torch.equal(cache[f"blocks.{layer}.attn.hook_rot_k"], cache[f"blocks.{layer}.attn.hook_k"])
    r.trained.eval()
    with torch.no_grad():  # the trained module is NoPE: it equals the loaded NoPE model
        assert (r.trained(input_ids=_ids()).logits - model(_ids())).abs().max() <= 1e-5
    rope = dl.load_hooked(rope_dir)
    with torch.no_grad():  # ... and RoPE would have given something else
        assert (rope(_ids()) - model(_ids())).abs().max() > 1e-2


def test_qk_norm_nope_round_trip(rope_dir, toy_data, tmp_path):
    import drope_lens as dl
    from drope_lens.recalibrate import recalibrate

    r = recalibrate(
        rope_dir,
        _recipe(variant="qk_norm_nope", max_steps=3, save_every=3),
        tmp_path / "run",
        data=toy_data,
        progress=False,
    )
    attn = r.trained.model.layers[1].self_attn
    assert not torch.allclose(attn.q_norm.weight, torch.ones_like(attn.q_norm.weight))  # trained
    model = dl.load_hooked(r.final)
    assert model.cfg.drope_attention_type == "qk_norm_nope"
    r.trained.eval()
    with torch.no_grad():
        assert (r.trained(input_ids=_ids()).logits - model(_ids())).abs().max() <= 1e-5
    pair = dl.load_pair(str(rope_dir), drope=r.final)
    assert pair.drope.cfg.is_nope and "recalibrated on 384 tokens" in pair.labels["drope"]


def test_resume_equals_uninterrupted(rope_dir, toy_data, tmp_path):
    """Interrupted after step 3 and rerun: Trainer.resume_from_checkpoint restores weights, AdamW,
    scheduler, RNG and the data position; on CPU the result is bit-identical (weights, optimizer state,
    every logged loss, LR and gradient norm)."""
    from safetensors.torch import load_file

    from drope_lens.recalibrate import recalibrate

    recipe = _recipe(max_steps=5, save_every=2, schedule="cosine", grad_accum=2, batch_size=2)
    full = recalibrate(rope_dir, recipe, tmp_path / "a", data=toy_data, progress=False)
    part = recalibrate(rope_dir, recipe, tmp_path / "b", data=toy_data, progress=False, stop_after=3)
    assert not part.finished and part.steps_done == 3
    assert [c["step"] for c in part.checkpoints] == [0, 2, 3]
    assert not (tmp_path / "b" / "checkpoint-2" / "optimizer.pt").exists()  # only the latest keeps its state
    assert (tmp_path / "b" / "checkpoint-3" / "optimizer.pt").exists()
    rest = recalibrate(rope_dir, recipe, tmp_path / "b", data=toy_data, progress=False)
    assert rest.resumed_from == 3 and rest.finished and rest.tokens_seen == full.tokens_seen
    assert [c["step"] for c in rest.checkpoints] == [0, 2, 3, 4, 5]
    a = load_file(str(tmp_path / "a" / "checkpoint-5" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoint-5" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    opt_a = torch.load(tmp_path / "a" / "checkpoint-5" / "optimizer.pt", weights_only=False)["state"]
    opt_b = torch.load(tmp_path / "b" / "checkpoint-5" / "optimizer.pt", weights_only=False)["state"]
    assert all(torch.equal(opt_a[i][k], opt_b[i][k]) for i in opt_a for k in ("exp_avg", "exp_avg_sq"))
    log_a = (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()
    log_b = (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()

    def strip(lines):
        return [{k: v for k, v in json.loads(line).items() if k not in ("tokens_per_s", "wall_s")} for line in lines]

    assert strip(log_a) == strip(log_b) and len(log_b) == 5
    assert [round(e["lr"], 12) for e in strip(log_a)] == [round(recipe.lr_at(s), 12) for s in range(5)]
    with pytest.raises(Exception, match="different recipe.lr"):
        recalibrate(
            rope_dir,
            _recipe(max_steps=5, save_every=2, schedule="cosine", grad_accum=2, batch_size=2, lr=1e-3),
            tmp_path / "b",
            data=toy_data,
            progress=False,
        )
    with pytest.raises(Exception, match="different recipe.global_batch"):
        recalibrate(
            rope_dir, _recipe(max_steps=5, save_every=2, schedule="cosine", grad_accum=2), tmp_path / "b", data=toy_data
        )


def test_heldout_split_is_disjoint_and_never_trained_on(rope_dir, tmp_path):
    from safetensors.torch import load_file

    from drope_lens.recalibrate import Document, check_disjoint, make_split, recalibrate, split_blocks
    from drope_lens.recalibrate.train import _Order

    words = "the a cat dog bird fish tree house car road city river sea sky sun moon".split()
    g = torch.Generator().manual_seed(0)
    docs = [
        Document(f"d{i}", " ".join(words[j] for j in torch.randint(len(words), (300,), generator=g))) for i in range(4)
    ]
    split = make_split(tiny_tokenizer(), docs, seq_len=16, n_heldout=8, seed=1)
    check_disjoint(split)
    assert sorted(split.train_ids + split.heldout_ids) == list(range(len(split.train_ids) + 8))
    assert (split.train[:, 0] == tiny_tokenizer().bos_token_id).all()
    assert make_split(tiny_tokenizer(), docs, seq_len=16, n_heldout=8, seed=1).heldout_ids == split.heldout_ids
    assert make_split(tiny_tokenizer(), docs, seq_len=16, n_heldout=8, seed=2).heldout_ids != split.heldout_ids
    blocks = torch.arange(40).view(10, 4)
    leaky = split_blocks(torch.cat([blocks, blocks[:1]]), n_heldout=3, seed=0)
    leaky.heldout[0] = leaky.train[0]  # a duplicated block must be caught
    with pytest.raises(AssertionError):
        check_disjoint(leaky)
    # the trainer only ever draws training rows, and saves the held-out rows it set aside
    data = tmp_path / "d"
    data.mkdir()
    for d in docs:
        (data / f"{d.name}.txt").write_text(d.text)
    r = recalibrate(
        rope_dir,
        _recipe(seq_len=16, heldout_blocks=8, seed=1, max_steps=2),
        tmp_path / "run",
        data=[str(data)],
        progress=False,
    )
    held = load_file(str(tmp_path / "run" / "heldout.safetensors"))["tokens"]
    run_split = make_split(
        tiny_tokenizer(),
        sorted([Document(f"{d.name}.txt", d.text) for d in docs], key=lambda d: d.name),
        seq_len=16,
        n_heldout=8,
        seed=1,
    )
    assert torch.equal(held, run_split.heldout)
    order = _Order(len(run_split.train), 1)
    rows = order.rows(0, 3 * len(run_split.train))
    assert sorted(set(rows)) == list(range(len(run_split.train)))  # each epoch a permutation of train rows
    assert r.finished


def test_recipe_schedule_and_bad_values():
    from drope_lens.errors import DropeLensInputError
    from drope_lens.recalibrate import Recipe

    r = Recipe(lr=1e-3, warmup_steps=4, schedule="cosine", max_steps=14, min_lr_ratio=0.1)
    assert [round(r.lr_at(s), 8) for s in range(4)] == [2.5e-4, 5e-4, 7.5e-4, 1e-3]
    assert r.lr_at(4) == pytest.approx(1e-3) and r.lr_at(13) == pytest.approx(1e-4)
    assert Recipe(max_tokens=1000, seq_len=10, batch_size=3, grad_accum=2).total_steps == 17
    # the embedded default run: its budget, label and cache folder are what they were before the Trainer
    d = Recipe()
    assert (d.total_steps, d.tokens_per_step, d.save_every) == (175, 1024, 25)
    assert d.describe() == "nope, lr 1e-04 cosine (warm-up 10), 256x4x1 tokens/step, float32, seed 0"
    assert d.cache_name() == "smollm2-135m-instruct-nope-179200tok"
    # several processes: batch_size is each one's micro-batch; the global batch sets steps and tokens
    w = Recipe(batch_size=2, grad_accum=3, world_size=4, seq_len=10, max_tokens=1000)
    assert (w.global_batch, w.tokens_per_step, w.total_steps) == (24, 240, 5)
    assert "10x2x3x4 tokens/step" in w.describe()
    same = (
        Recipe(batch_size=2, grad_accum=2),
        Recipe(batch_size=2, world_size=2),
        Recipe(batch_size=1, grad_accum=2, world_size=2),
    )
    assert all(r.training_identity() == d.training_identity() for r in same)  # global batch 4: may resume
    assert Recipe(world_size=2).training_identity() != d.training_identity()
    for bad in (
        dict(variant="rope"),
        dict(lr=0.0),
        dict(seq_len=1),
        dict(schedule="linear"),
        dict(kl_weight=-1.0),
        dict(dtype="int8"),
        dict(attention="flash"),
        dict(world_size=0),
    ):
        with pytest.raises(DropeLensInputError):
            Recipe(**bad)


def test_kl_to_teacher_option_changes_the_loss(rope_dir, toy_data, tmp_path):
    from drope_lens.recalibrate import recalibrate

    plain = recalibrate(rope_dir, _recipe(max_steps=1), tmp_path / "a", data=toy_data, progress=False)
    kl = recalibrate(rope_dir, _recipe(max_steps=1, kl_weight=1.0), tmp_path / "b", data=toy_data, progress=False)
    assert kl.losses[0] > plain.losses[0]  # CE + a positive KL (the student is NoPE, the teacher RoPE)
    assert "not DroPE's recipe" in _recipe(kl_weight=0.5).describe()


def test_bf16_autocast_and_gradient_checkpointing_on_cpu(rope_dir, toy_data, tmp_path):
    """The GPU recipe's code path on CPU: gradient checkpointing changes nothing but memory (same
    losses and weights); bf16 autocast trains (finite, different, close losses) and still saves fp32
    master weights that load with load_hooked."""
    from safetensors.torch import load_file

    import drope_lens as dl
    from drope_lens.recalibrate import recalibrate

    runs = {
        name: recalibrate(
            rope_dir, _recipe(max_steps=3, save_every=3, **kw), tmp_path / name, data=toy_data, progress=False
        )
        for name, kw in (("fp32", {}), ("ckpt", {"grad_checkpointing": True}), ("bf16", {"dtype": "bfloat16"}))
    }
    fp32, ckpt, bf16 = (runs[k] for k in ("fp32", "ckpt", "bf16"))
    assert ckpt.trained.is_gradient_checkpointing and not fp32.trained.is_gradient_checkpointing
    assert ckpt.losses == pytest.approx(fp32.losses, rel=1e-6, abs=1e-6)
    w = {k: load_file(str(tmp_path / k / "checkpoint-3" / "model.safetensors")) for k in runs}
    for name, t in w["fp32"].items():
        torch.testing.assert_close(w["ckpt"][name], t, rtol=1e-5, atol=1e-6)
    assert all(math.isfinite(v) for v in bf16.losses) and bf16.losses != fp32.losses
    assert bf16.losses == pytest.approx(fp32.losses, rel=0.05)
    assert {t.dtype for t in w["bf16"].values()} == {torch.float32}
    assert json.loads((tmp_path / "bf16" / "recalibrate.json").read_text())["launch"]["mixed_precision"] == "bf16"
    model = dl.load_hooked(str(tmp_path / "bf16" / "checkpoint-3"))
    assert torch.isfinite(model(_ids())).all()


def test_float16_and_unusable_devices_are_refused_before_loading(monkeypatch):
    from drope_lens.errors import DropeLensInputError
    from drope_lens.recalibrate import Recipe
    from drope_lens.recalibrate.train import check_device

    with pytest.raises(DropeLensInputError, match="loss scaling"):
        Recipe(dtype="float16")
    assert check_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert check_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_device("auto").type == "cpu"
    with pytest.raises(DropeLensInputError, match="--device nonsense"):
        check_device("nonsense")
    with pytest.raises(DropeLensInputError, match="cpu, cuda or mps"):
        check_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(DropeLensInputError, match="no CUDA GPU"):
            check_device("cuda")

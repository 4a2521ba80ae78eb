"""Tracking any DroPE training run: HF Trainer output folders written by a plain ``transformers.Trainer``
(no drope_lens files, no tokenizer), tokens seen from ``trainer_state.json`` or the global batch, and the
training callback whose rows equal ``track`` on the saved checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from tests.recalibrate.test_recalibrate import _recipe, rope_dir, toy_data  # noqa: F401  (fixtures)

SEQ, BATCH, STEPS = 16, 2, 4


def foreign_run(rope, out, *, count_tokens: bool):
    """A DroPE recalibration written by the plain HF Trainer, as another codebase would: DroPE-format
    checkpoints (checkpoint-2, checkpoint-4) with trainer_state.json, no tokenizer, no drope_lens files."""
    from transformers import Trainer, TrainingArguments, default_data_collator

    from drope_lens.recalibrate.model import drope_training_model

    model, _ = drope_training_model(rope, "qk_norm_nope")
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(4, 150, (STEPS * BATCH, SEQ), generator=g)
    data = [{"input_ids": r, "labels": r} for r in rows]
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=BATCH,
        max_steps=STEPS,
        save_steps=2,
        learning_rate=1e-3,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        include_num_input_tokens_seen="all" if count_tokens else "no",
        logging_steps=1,
    )
    Trainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator).train()
    return out


@pytest.fixture(scope="module")
def uncounted(rope_dir, tmp_path_factory):  # noqa: F811
    return foreign_run(rope_dir, tmp_path_factory.mktemp("foreign") / "out", count_tokens=False)


def test_a_plain_trainer_run_needs_a_tokenizer_and_the_tokens_per_step(uncounted, rope_dir):  # noqa: F811
    from drope_lens.errors import DropeLensInputError
    from drope_lens.loading import drope_format as fmt
    from drope_lens.track.pipeline import checkpoint_points

    assert [p.name for p in fmt.trainer_checkpoints(uncounted)] == ["checkpoint-2", "checkpoint-4"]
    assert (
        not (uncounted / "checkpoint-4" / "tokenizer.json").exists()
        and fmt.read_meta(uncounted / "checkpoint-4") is None
    )
    with pytest.raises(DropeLensInputError, match="--tokenizer"):
        checkpoint_points([uncounted], tokens_per_step=SEQ * BATCH)
    with pytest.raises(DropeLensInputError, match="--global-batch and --seq-len"):
        checkpoint_points([uncounted], rope=str(rope_dir))
    points = checkpoint_points([uncounted], rope=str(rope_dir), tokens_per_step=SEQ * BATCH)
    assert [(p.name, p.role, p.step, p.tokens) for p in points] == [
        ("rope", "rope", None, None),
        ("checkpoint-2", "drope", 2, 2 * SEQ * BATCH),
        ("checkpoint-4", "drope", 4, 4 * SEQ * BATCH),
    ]
    assert {p.tokenizer for p in points[1:]} == {str(rope_dir)}


def test_cli_track_over_a_plain_trainer_run(uncounted, rope_dir, tmp_path):  # noqa: F811
    from drope_lens.cli import main
    from drope_lens.loading import load_hooked

    j = tmp_path / "t.json"
    argv = ["track", str(uncounted), "--rope", str(rope_dir), "--global-batch", str(BATCH), "--seq-len", str(SEQ)]
    assert main([*argv, "--metrics", "ppl,bos", "--json", str(j), "--figure", str(tmp_path / "t.png")]) == 0
    rows = json.loads(j.read_text())["rows"]
    by = {(r["checkpoint"], r["metric"]): r for r in rows}
    assert {r["checkpoint"] for r in rows} == {"rope", "checkpoint-2", "checkpoint-4"}
    assert by[("checkpoint-4", "ppl_heldout")]["tokens"] == 4 * SEQ * BATCH
    # the checkpoint was measured as the DroPE model it is: q/k norms of the trained run, no RoPE
    model = load_hooked(uncounted / "checkpoint-4", tokenizer=load_hooked(rope_dir).tokenizer)
    assert model.cfg.is_nope and model.cfg.drope_attention_type == "qk_norm_nope"
    assert by[("rope", "ppl_heldout")]["value"] != by[("checkpoint-4", "ppl_heldout")]["value"]
    assert (tmp_path / "t.png").stat().st_size > 0


def test_tokens_seen_come_from_the_trainer_state_when_it_counted_them(rope_dir, tmp_path):  # noqa: F811
    from drope_lens.loading.drope_format import tokens_seen
    from drope_lens.track.pipeline import checkpoint_points

    run = foreign_run(rope_dir, tmp_path / "out", count_tokens=True)
    state = json.loads((run / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["num_input_tokens_seen"] == 2 * SEQ * BATCH
    points = checkpoint_points([run], tokenizer=str(rope_dir))  # no tokens-per-step flag needed
    assert [(p.step, p.tokens) for p in points] == [(2, 2 * SEQ * BATCH), (4, 4 * SEQ * BATCH)]
    # a state that only logged the count (log_history), and one that never counted it
    folder = tmp_path / "checkpoint-7"
    folder.mkdir()
    log = [{"step": 5, "num_input_tokens_seen": 500}, {"step": 7, "num_input_tokens_seen": 700, "loss": 1.0}]
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 7, "log_history": log}))
    assert tokens_seen(folder) == (7, 700)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 7, "log_history": [{"step": 7}]}))
    assert tokens_seen(folder) == (7, None) and tokens_seen(folder, 64) == (7, 448)


@pytest.fixture(scope="module")
def tracked(rope_dir, toy_data, tmp_path_factory):  # noqa: F811
    from drope_lens.options import TrackOptions
    from drope_lens.recalibrate import recalibrate

    out = tmp_path_factory.mktemp("tracked") / "run"
    opts = TrackOptions(metrics=("ppl", "massive", "bos"), max_length=32, heldout_blocks=4)
    recipe = _recipe(max_steps=4, save_every=2, variant="qk_norm_nope")  # the q/k norms go into the measured copy
    res = recalibrate(rope_dir, recipe, out, data=toy_data, progress=False, track_every=2, track_options=opts)
    return out, res, opts


def test_training_callback_rows_equal_track_on_the_saved_checkpoints(tracked):
    from drope_lens.track.pipeline import TrackResult, track

    out, res, opts = tracked
    saved = json.loads((out / "track" / "during_training.json").read_text())
    live = TrackResult.from_dict(saved)
    assert [p.name for p in live.points] == ["rope", "step-0", "step-2", "step-4"]
    assert [p.tokens for p in live.points] == [None, 0, 256, 512] and saved["every"] == 2
    assert live.rows() == res.tracked.rows()
    after = track([out], options=opts, progress=False)  # the second pass, over the saved checkpoints
    names = {"rope": "rope", "step-0": "checkpoint-0", "step-2": "checkpoint-2", "step-4": "checkpoint-4"}
    got = {(names[r["checkpoint"]], r["metric"]): r["value"] for r in live.rows()}
    want = {(r["checkpoint"], r["metric"]): r["value"] for r in after.rows()}
    assert got.keys() == want.keys() and len(got) == 4 * (1 + 9 + 4)
    for key, value in want.items():  # the weights in memory measure as the same weights read from disk
        assert got[key] == (None if value is None else pytest.approx(value, rel=1e-5, abs=1e-6)), key
    assert got[("checkpoint-4", "ppl_heldout")] < got[("checkpoint-0", "ppl_heldout")]  # it learnt
    assert (out / "track" / "during_training.png").stat().st_size > 0


def test_tracking_leaves_training_unchanged_and_resumes_its_rows(tracked, rope_dir, toy_data, tmp_path):  # noqa: F811
    from safetensors.torch import load_file

    from drope_lens.recalibrate import recalibrate

    out, res, opts = tracked
    recipe = _recipe(max_steps=4, save_every=2, variant="qk_norm_nope")
    plain = recalibrate(rope_dir, recipe, tmp_path / "plain", data=toy_data, progress=False)
    a, b = load_file(f"{res.final}/model.safetensors"), load_file(f"{plain.final}/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # measuring draws no random number the run uses
    assert res.losses == plain.losses
    # interrupted at step 3 (measured there too), resumed: the rows up to 3 stay, step 4 is added
    kw = dict(data=toy_data, progress=False, track_every=2, track_options=opts)
    recalibrate(rope_dir, recipe, tmp_path / "cut", stop_after=3, **kw)
    steps = [
        c["step"] for c in json.loads((tmp_path / "cut" / "track" / "during_training.json").read_text())["checkpoints"]
    ]
    assert steps == [None, 0, 2, 3]
    recalibrate(rope_dir, recipe, tmp_path / "cut", **kw)
    points = json.loads((tmp_path / "cut" / "track" / "during_training.json").read_text())["checkpoints"]
    assert [c["step"] for c in points] == [None, 0, 2, 3, 4]

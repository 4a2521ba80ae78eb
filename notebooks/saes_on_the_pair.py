# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # SAEs on a RoPE model and its NoPE twin (SAELens)
#
# `dl.load_pair(model_class=HookedSAETransformer)` gives two SAELens `HookedSAETransformer`s with everything
# drope_lens adds (fast attention, fp32 scores, NaN checks, DroPE q/k norms where a checkpoint has them). Here
# SAELens's own training runner (`LanguageModelSAETrainingRunner`) trains one small TopK SAE on the residual
# stream of each model, on the same tokens from drope_lens's built-in corpus, and the features are compared on
# held-out text. The budget is tiny (20k tokens per SAE, ~1 min per model on two CPU cores) and meant to show
# the workflow, not to make good SAEs. Needs the `sae` extra (`pip install 'drope_lens[sae]'`, TransformerLens < 4);
# see docs/composing.md.

# %%
import torch
from datasets import Dataset
from IPython.display import display
from sae_lens import (
    HookedSAETransformer,
    LanguageModelSAERunnerConfig,
    LanguageModelSAETrainingRunner,
    LoggingConfig,
    TopKTrainingSAEConfig,
)

import drope_lens as dl
from drope_lens.data.texts import builtin_texts
from drope_lens.errors import DropeLensInputError
from drope_lens.recalibrate.blocks import pack_blocks, token_stream
from drope_lens.recalibrate.corpus import Document, builtin_documents

torch.manual_seed(0)
pair = dl.load_pair(model_class=HookedSAETransformer, backend="hooked")  # SAELens: the hooked backend
print(type(pair.rope).__name__, "|", pair.labels["rope"], "|", pair.labels["drope"])

# %% [markdown]
# ## Training data: drope_lens's built-in corpus, packed into BOS-first blocks
#
# The Wikipedia sample of the built-in corpus (`make corpus` fetches it; without it, the 15 built-in texts). SAELens
# gets the blocks as a pre-tokenized `datasets.Dataset`, so nothing is downloaded. Position 0 (BOS, whose residual
# norm is far larger than any other token's) is left out of training with `seqpos_slice=(1, None)`.

# %%
try:
    docs, source = builtin_documents(["enwiki"])[:40], "Wikipedia sample of the built-in corpus"
except DropeLensInputError:  # the corpus is not fetched
    docs, source = [Document(f"text {i}", t) for i, t in enumerate(builtin_texts())], "built-in texts"
CONTEXT = 128
blocks = pack_blocks(token_stream(pair.tokenizer, docs), CONTEXT, bos_id=pair.tokenizer.bos_token_id)
dataset = Dataset.from_dict({"input_ids": blocks.tolist()})
print(f"{source}: {len(blocks)} blocks of {CONTEXT} tokens")

# %% [markdown]
# ## One SAE per model, SAELens's runner, the same settings and seed

# %%
LAYER = 3
HOOK = f"blocks.{LAYER}.hook_resid_post"


def train_sae(model):
    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=model.cfg.d_model, d_sae=4 * model.cfg.d_model, k=32),
        model_name=model.cfg.model_name,
        hook_name=HOOK,
        dataset_path="",  # the dataset is passed in below
        is_dataset_tokenized=True,
        streaming=False,
        context_size=CONTEXT,
        prepend_bos=False,  # the blocks start with BOS already
        seqpos_slice=(1, None),  # not BOS
        training_tokens=20_000,
        train_batch_size_tokens=256,
        store_batch_size_prompts=8,
        n_batches_in_buffer=8,
        n_batches_for_norm_estimate=4,
        lr=4e-3,
        device=str(model.cfg.device),
        seed=0,
        logger=LoggingConfig(log_to_wandb=False),
        n_checkpoints=0,
        checkpoint_path=None,  # the SAEs stay in memory: nothing written next to the notebook
        output_path=None,
    )
    return LanguageModelSAETrainingRunner(cfg, override_dataset=dataset, override_model=model).run()


saes = {role: train_sae(model) for role, model in pair.items()}

# %% [markdown]
# ## Features on held-out text
#
# The built-in texts (not in the training blocks), BOS first. For each SAE on each model's activations: the
# variance it explains on ordinary tokens, dead features (never active), the median density of the live ones, and
# BOS, which training left out: its residual norm against the median token's, and the SAE's relative
# reconstruction error there (TopK makes exactly k features fire on every token, BOS included, so counting BOS
# features would say nothing).

# %%
batch = pair.encode(builtin_texts())
acts = {}
for role, model in pair.items():
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.tokens, names_filter=HOOK, stop_at_layer=LAYER + 1)
    acts[role] = cache[HOOK]
body = batch.mask.clone()
body[:, 0] = False  # every real token but BOS


def features(sae, x):
    with torch.no_grad():
        f = sae.encode(x)
        recon = sae.decode(f)
    xb, rb, fb = x[body], recon[body], f[body]
    explained = 1 - ((xb - rb) ** 2).sum() / ((xb - xb.mean(0)) ** 2).sum()
    density = (fb > 0).float().mean(0)
    bos, bos_recon = x[:, 0], recon[:, 0]
    return {
        "explained variance": round(float(explained), 3),
        "dead": round(float((density == 0).float().mean()), 3),
        "median live density": round(float(density[density > 0].median()), 4),
        "BOS norm / median token norm": round(float(bos.norm(dim=-1).median() / xb.norm(dim=-1).median()), 1),
        "BOS relative error": round(float(((bos - bos_recon).norm(dim=-1) / bos.norm(dim=-1)).median()), 3),
    }, f


rows, feats = [], {}
for sae_role, sae in saes.items():
    for act_role, x in acts.items():
        row, f = features(sae, x)
        rows.append({"SAE trained on": sae_role, "activations of": act_role, **row})
        if sae_role == act_role:
            feats[sae_role] = f
display(rows)

# %% [markdown]
# ## The densest features of each SAE and their top tokens

# %%
tokens = batch.tokens


def top_tokens(f, feature, n=6):
    scores = f[..., feature].masked_fill(~body, float("-inf")).flatten()
    best = scores.topk(n).indices
    return [pair.tokenizer.decode([int(tokens.flatten()[i])]) for i in best]


for role, f in feats.items():
    density = (f[body] > 0).float().mean(0)
    print(f"{role}:")
    for feature in density.topk(3).indices.tolist():
        print(f"  feature {feature} (density {float(density[feature]):.2f}):", top_tokens(f, feature))

# %% [markdown]
# ## The trained SAE back in the model: `run_with_saes`
#
# With the error term the logits equal the plain forward (the SAE's reconstruction error is added back); without it
# the reconstruction replaces the residual stream at layer 3, and the loss shows what the SAE loses.

# %%
probe = batch.tokens[:4]
for role, model in pair.items():
    sae = saes[role]
    with torch.no_grad():
        plain = model(probe, return_type="loss").item()
        spliced = model.run_with_saes(probe, saes=[sae], return_type="loss").item()
        exact = model.run_with_saes(probe, saes=[sae], use_error_term=True, return_type="loss").item()
    print(f"{role}: loss {plain:.3f}, with the SAE's reconstruction {spliced:.3f}, with the error term {exact:.3f}")
    assert abs(exact - plain) < 1e-3

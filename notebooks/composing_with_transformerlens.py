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
# # Composing drope_lens with TransformerLens
#
# drope_lens hooks are ordinary `fn(tensor, hook)` functions: they stack with your own hooks in `run_with_hooks` /
# `model.hooks()`, and the models are plain `HookedTransformer`s, so `run_with_cache` and activation patching work as
# usual.

# %%
import torch
from IPython.display import display

import drope_lens as dl
from drope_lens.hooks.bos import bos_mlp_ablation_hooks
from drope_lens.hooks.mean_replacement import qk_mean_replacement_hooks

torch.manual_seed(0)
pair = dl.load_pair()
model = pair.rope
tokens = pair.encode("Mount Everest is the highest mountain on Earth. The highest mountain on Earth is Mount").tokens
display(tokens.shape)

# %% [markdown]
# ## run_with_cache on a few hook points (names_filter keeps memory small)

# %%
logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_pattern", "hook_resid_pre")))
bos_attention = torch.stack([cache["pattern", layer][0, :, 1:, 0].mean(-1) for layer in range(model.cfg.n_layers)])
print("mean attention to BOS per layer:", bos_attention.mean(-1)[:6])

# %% [markdown]
# ## drope_lens interventions stacked with a user hook
#
# Q/K mean replacement (Jin-style, prompt only) plus a user hook that records the final residual norm.


# %%
def loss(**kw):
    with torch.no_grad():
        return model(tokens, return_type="loss", **kw).item()


norms = []
record = (
    f"blocks.{model.cfg.n_layers - 1}.hook_resid_post",
    lambda x, hook: norms.append(x.norm(dim=-1).mean().item()),
)
qk = qk_mean_replacement_hooks(model)
with model.hooks(fwd_hooks=qk + [record]):
    disrupted = loss()
print(f"clean loss {loss():.3f}, Q/K mean-replaced {disrupted:.3f}, final resid norm {norms[-1]:.1f}")
assert all(len(hp.fwd_hooks) == 0 for hp in model.hook_dict.values())  # nothing left behind

# %% [markdown]
# ## Activation patching: which layer's clean residual undoes the Q/K disruption?
#
# Run the disrupted model, but patch in the clean `resid_pre` of one layer at a time and see how much of the clean
# loss comes back.

# %%
clean_loss = loss()
recovered = []
for layer in range(0, model.cfg.n_layers, 5):
    clean = cache["resid_pre", layer]
    patch = (f"blocks.{layer}.hook_resid_pre", lambda x, hook, clean=clean: clean)
    # layers below `layer` are overwritten by the patch; disrupt only the layers from `layer` on
    later = qk_mean_replacement_hooks(model, layers=range(layer, model.cfg.n_layers))
    with model.hooks(fwd_hooks=[patch] + later):
        recovered.append((layer, round(loss(), 3)))
print("clean", round(clean_loss, 3), "disrupted", round(disrupted, 3))
display(recovered)

# %% [markdown]
# ## BOS-MLP ablation during generation (KV cache)
#
# The ablation touches absolute position 0 only: generated tokens are never ablated.

# %%
prompt = pair.encode("The capital of France is").tokens
with model.hooks(fwd_hooks=bos_mlp_ablation_hooks(1, model=model)):
    out = model.generate(prompt, max_new_tokens=8, do_sample=False, use_past_kv_cache=True, verbose=False)
model.to_string(out[0, prompt.shape[1] :])

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
# # drope_lens quickstart
#
# Load a RoPE model and its NoPE twin as two `HookedTransformer`s, find massive Q/K/V values, measure attention sinks
# from the models' real attention, and look at the attention heads.
#
# The default pair is the embedded SmolLM2-135M-Instruct and its **zero-shot NoPE twin (RoPE removed, not
# recalibrated)**. For the study's pair use `dl.load_pair('meta-llama/Llama-2-7b-hf', 'SakanaAI/Llama-2-7b-hf-DroPE',
# dtype='bfloat16', device='cuda')`.

# %%
import torch
from IPython.display import display

import drope_lens as dl
from drope_lens.analysis.massive import detect_massive
from drope_lens.analysis.profile_pass import phase_profile
from drope_lens.data.texts import builtin_texts
from drope_lens.views import pair_attention_view, sink_score_map

torch.manual_seed(0)
pair = dl.load_pair()
display(pair.labels)

# %% [markdown]
# ## Massive values
#
# Per layer, a (head, dim) channel is massive when its token-L2 norm exceeds λ = 5 times the layer's mean (the study's
# definition, pre-RoPE `hook_q/k/v`). Reductions happen inside hooks; no activation cache is kept.

# %%
texts = builtin_texts()[:4]
found = {role: detect_massive(model, texts, max_length=128) for role, model in pair.items()}
for res in found.values():
    print(res.summary())
found["rope"].to_dataframe().query("tensor == 'q'").head()

# %%
top = found["rope"].top_channels("q", n=5)
[(c["layer"], c["head"], c["dim"], c["band"], round(c["ratio_to_layer_mean"], 1)) for c in top]

# %% [markdown]
# ## Attention sinks and BOS metrics
#
# Sink scores come from `hook_pattern`, i.e. the real post-RoPE attention, computed in fp32.

# %%
profiles = {role: phase_profile(model, texts, max_length=128) for role, model in pair.items()}
{
    role: {k: p.summary()[k] for k in ("mean_sink_rate", "spike_layer_argmax", "spike_layer_first_above")}
    for role, p in profiles.items()
}

# %% [markdown]
# ## Attention heads, side by side (renders offline)

# %%
view = pair_attention_view(pair, "The river flows past the old mill where the miller counts sacks of grain.", layer=1)
display(view)

# %%
sink_score_map(profiles["drope"].sink_score, title=pair.labels["drope"])

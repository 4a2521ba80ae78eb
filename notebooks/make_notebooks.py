"""Writes the notebooks in this folder (run it after editing the cells below; outputs are not stored)."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

QUICKSTART = [
    new_markdown_cell(
        "# drope_lens quickstart\n\n"
        "Load a RoPE model and its NoPE twin as two `HookedTransformer`s, find massive Q/K/V values, "
        "measure attention sinks from the models' real attention, and look at the attention heads.\n\n"
        "The default pair is the embedded SmolLM2-135M-Instruct and its **zero-shot NoPE twin (RoPE "
        "removed, not recalibrated)**. For the study's pair use "
        "`dl.load_pair('meta-llama/Llama-2-7b-hf', 'SakanaAI/Llama-2-7b-hf-DroPE', dtype='bfloat16', device='cuda')`."
    ),
    new_code_cell(
        "import torch\n"
        "import drope_lens as dl\n"
        "from drope_lens.data.texts import builtin_texts\n\n"
        "torch.manual_seed(0)\n"
        "pair = dl.load_pair()\n"
        "pair.labels"
    ),
    new_markdown_cell("## Massive values\n\nPer layer, a (head, dim) channel is massive when its token-L2 norm exceeds "
                      "λ = 5 times the layer's mean (the study's definition, pre-RoPE `hook_q/k/v`). "
                      "Reductions happen inside hooks; no activation cache is kept."),
    new_code_cell(
        "from drope_lens.analysis.massive import detect_massive\n\n"
        "texts = builtin_texts()[:4]\n"
        "found = {role: detect_massive(model, texts, max_length=128) for role, model in pair.items()}\n"
        "for res in found.values():\n"
        "    print(res.summary())\n"
        "found['rope'].to_dataframe().query(\"tensor == 'q'\").head()"
    ),
    new_code_cell(
        "top = found['rope'].top_channels('q', n=5)\n"
        "[(c['layer'], c['head'], c['dim'], c['band'], round(c['ratio_to_layer_mean'], 1)) for c in top]"
    ),
    new_markdown_cell("## Attention sinks and BOS metrics\n\nSink scores come from `hook_pattern`, i.e. "
                      "the real post-RoPE attention, computed in fp32."),
    new_code_cell(
        "from drope_lens.analysis.profile_pass import phase_profile\n\n"
        "profiles = {role: phase_profile(model, texts, max_length=128) for role, model in pair.items()}\n"
        "{role: {k: p.summary()[k] for k in ('mean_sink_rate', 'spike_layer_argmax', 'spike_layer_first_above')}\n"
        " for role, p in profiles.items()}"
    ),
    new_markdown_cell("## Attention heads, side by side (renders offline)"),
    new_code_cell(
        "from drope_lens.views import pair_attention_view, sink_score_map\n\n"
        "view = pair_attention_view(pair, 'The river flows past the old mill where the miller counts sacks of grain.', "
        "layer=1)\n"
        "view"
    ),
    new_code_cell("sink_score_map(profiles['drope'].sink_score, title=pair.labels['drope'])"),
]

COMPOSE = [
    new_markdown_cell(
        "# Composing drope_lens with TransformerLens\n\n"
        "drope_lens hooks are ordinary `fn(tensor, hook)` functions: they stack with your own hooks in "
        "`run_with_hooks` / `model.hooks()`, and the models are plain `HookedTransformer`s, so "
        "`run_with_cache` and activation patching work as usual."
    ),
    new_code_cell(
        "import torch\n"
        "import drope_lens as dl\n"
        "from drope_lens.hooks.mean_replacement import qk_mean_replacement_hooks\n"
        "from drope_lens.hooks.bos import bos_mlp_ablation_hooks\n\n"
        "torch.manual_seed(0)\n"
        "pair = dl.load_pair()\n"
        "model = pair.rope\n"
        "tokens = pair.encode('Mount Everest is the highest mountain on Earth. "
        "The highest mountain on Earth is Mount').tokens\n"
        "tokens.shape"
    ),
    new_markdown_cell("## run_with_cache on a few hook points (names_filter keeps memory small)"),
    new_code_cell(
        "logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith('hook_pattern') "
        "or n.endswith('hook_resid_pre'))\n"
        "bos_attention = torch.stack([cache['pattern', layer][0, :, 1:, 0].mean(-1) "
        "for layer in range(model.cfg.n_layers)])\n"
        "print('mean attention to BOS per layer:', bos_attention.mean(-1)[:6])"
    ),
    new_markdown_cell("## drope_lens interventions stacked with a user hook\n\n"
                      "Q/K mean replacement (Jin-style, prompt only) plus a user hook that records the "
                      "final residual norm."),
    new_code_cell(
        "def loss(**kw):\n"
        "    with torch.no_grad():\n"
        "        return model(tokens, return_type='loss', **kw).item()\n\n"
        "norms = []\n"
        "record = (f'blocks.{model.cfg.n_layers - 1}.hook_resid_post', "
        "lambda x, hook: norms.append(x.norm(dim=-1).mean().item()))\n"
        "qk = qk_mean_replacement_hooks(model)\n"
        "with model.hooks(fwd_hooks=qk + [record]):\n"
        "    disrupted = loss()\n"
        "print(f'clean loss {loss():.3f}, Q/K mean-replaced {disrupted:.3f}, final resid norm {norms[-1]:.1f}')\n"
        "assert all(len(hp.fwd_hooks) == 0 for hp in model.hook_dict.values())  # nothing left behind"
    ),
    new_markdown_cell("## Activation patching: which layer's clean residual undoes the Q/K disruption?\n\n"
                      "Run the disrupted model, but patch in the clean `resid_pre` of one layer at a time "
                      "and see how much of the clean loss comes back."),
    new_code_cell(
        "clean_loss = loss()\n"
        "recovered = []\n"
        "for layer in range(0, model.cfg.n_layers, 5):\n"
        "    clean = cache['resid_pre', layer]\n"
        "    patch = (f'blocks.{layer}.hook_resid_pre', lambda x, hook, clean=clean: clean)\n"
        "    # layers below `layer` are overwritten by the patch; disrupt only the layers from `layer` on\n"
        "    later = qk_mean_replacement_hooks(model, layers=range(layer, model.cfg.n_layers))\n"
        "    with model.hooks(fwd_hooks=[patch] + later):\n"
        "        recovered.append((layer, round(loss(), 3)))\n"
        "print('clean', round(clean_loss, 3), 'disrupted', round(disrupted, 3))\n"
        "recovered"
    ),
    new_markdown_cell("## BOS-MLP ablation during generation (KV cache)\n\n"
                      "The ablation touches absolute position 0 only: generated tokens are never ablated."),
    new_code_cell(
        "prompt = pair.encode('The capital of France is').tokens\n"
        "with model.hooks(fwd_hooks=bos_mlp_ablation_hooks(1, model=model)):\n"
        "    out = model.generate(prompt, max_new_tokens=8, do_sample=False, use_past_kv_cache=True, verbose=False)\n"
        "model.to_string(out[0, prompt.shape[1]:])"
    ),
]


def write(name: str, cells) -> None:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    write("quickstart.ipynb", QUICKSTART)
    write("composing_with_transformerlens.ipynb", COMPOSE)

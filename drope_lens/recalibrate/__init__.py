"""Recalibration: RoPE -> DroPE continued pretraining (see :func:`recalibrate`).

Names are imported on first use, so ``drope_lens.recalibrate.recipe`` (the CLI's defaults) loads without torch."""

from drope_lens._lazy import lazy_exports

_EXPORTS = {
    **{
        n: "drope_lens.recalibrate.blocks"
        for n in ("BlockSplit", "check_disjoint", "make_split", "pack_blocks", "split_blocks")
    },
    # the checkpoint format lives with loading (loading never imports recalibrate)
    **{n: "drope_lens.loading.drope_format" for n in ("list_checkpoints", "read_meta", "recalibration_label")},
    **{n: "drope_lens.recalibrate.corpus" for n in ("Document", "builtin_documents", "load_documents")},
    "DroPELlamaForCausalLM": "drope_lens.recalibrate.model",
    "Recipe": "drope_lens.recalibrate.recipe",
    **{n: "drope_lens.recalibrate.train" for n in ("RecalibrationResult", "default_run_dir", "recalibrate")},
}
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

__all__ = [
    "BlockSplit",
    "DroPELlamaForCausalLM",
    "Document",
    "Recipe",
    "RecalibrationResult",
    "builtin_documents",
    "check_disjoint",
    "default_run_dir",
    "list_checkpoints",
    "load_documents",
    "make_split",
    "pack_blocks",
    "read_meta",
    "recalibrate",
    "recalibration_label",
    "split_blocks",
]

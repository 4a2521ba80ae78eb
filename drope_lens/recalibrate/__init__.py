"""Recalibration: RoPE -> DroPE continued pretraining (see :func:`recalibrate`)."""

from drope_lens.recalibrate.blocks import BlockSplit, check_disjoint, make_split, pack_blocks, split_blocks
from drope_lens.recalibrate.checkpoint import list_checkpoints, read_meta, recalibration_label
from drope_lens.recalibrate.corpus import Document, builtin_documents, load_documents
from drope_lens.recalibrate.recipe import Recipe
from drope_lens.recalibrate.train import RecalibrationResult, default_run_dir, recalibrate

__all__ = ["BlockSplit", "Document", "Recipe", "RecalibrationResult", "builtin_documents", "check_disjoint",
           "default_run_dir", "list_checkpoints", "load_documents", "make_split", "pack_blocks",
           "read_meta", "recalibrate", "recalibration_label", "split_blocks"]

"""Text sources for drope_lens analyses: built-in texts, local files, Hugging Face datasets."""

from drope_lens.data.texts import GENRES, builtin_split, builtin_texts, load_hf_texts, load_text_file

__all__ = ["GENRES", "builtin_split", "builtin_texts", "load_hf_texts", "load_text_file"]

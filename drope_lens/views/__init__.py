"""drope_lens.views"""

"""drope_lens.tasks"""

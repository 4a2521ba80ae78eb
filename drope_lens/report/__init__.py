"""drope_lens.report"""

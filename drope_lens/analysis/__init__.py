"""drope_lens.analysis"""

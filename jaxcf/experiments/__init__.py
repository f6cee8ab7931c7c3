"""Experiments: registered methods wired to datasets, post-processing and evaluation.

segmentation   counterfactual segmentation of BraTS slices (papers 000 / 001): cases in
               and out as NIfTI, Table 1 over a split
"""

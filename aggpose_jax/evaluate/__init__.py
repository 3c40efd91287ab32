"""Evaluation: top-down prediction and decoding, rescoring and OKS-NMS, COCO OKS AP, pictures.

``job.evaluate_params`` evaluates a configured run; ``topdown.evaluate`` any predict function.
"""

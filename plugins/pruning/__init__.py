"""Structured pruning: `prune-heads` (``heads``) and `prune-ffn` (``ffn``).

Both remove whole units for real (attention heads, FFN neurons) and share one skeleton
(``base``: calibration, scoring, choosing, surgery, optional recovery), the importance
scores through unit masks (``importance``) and the recovery fine-tune (``recovery``).
"""

"""Fused ops for the model core: one file per op (torch reference, Triton kernel, launcher)."""

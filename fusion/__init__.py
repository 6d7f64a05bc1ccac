"""The multimodal fusion model: pure torch, bundle -> tensors -> risk.

This package imports no database, broker or web framework (enforced by a test).
"""

"""Subword tokenizers: BPE (Sennrich et al.), byte-level BPE (GPT-2) and WordPiece (BERT).

Our classes are the readable reference; ``fast.FastTokenizer`` wraps HF ``tokenizers`` built from
the same files for the training pipeline, and tests hold the two to identical ids.
"""

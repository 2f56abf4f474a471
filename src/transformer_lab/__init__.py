"""transformer-lab: the Transformer family from scratch, readable, oracle-checked and measured."""

__version__ = "0.1.0"

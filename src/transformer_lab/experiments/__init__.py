"""Experiments: each question of the Transformer interview canon answered by a measurement, a
decision rule fixed before the run, a verdict and a figure (``transformer-lab explain``).

The library never imports this package; it sits above the tasks, below the CLI.
"""

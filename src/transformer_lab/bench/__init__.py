"""Benchmarks: ours and the peer library side by side in one process, rounds interleaved, the ratio
reported (``transformer-lab bench ...``). One module per benchmark; ``harness`` holds the timing and
the result shape every benchmark returns (and the experiments can share)."""

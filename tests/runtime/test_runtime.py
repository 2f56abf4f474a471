"""The Runtime seam (``runtime``): device choice in one place, with clear errors; model placement and
unwrapping (the plain model inside torch.compile / DDP wrappers)."""

import pytest
import torch

from transformer_lab.runtime import Runtime, choose_device, unwrap


def test_device_choice():
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="not a device name"):
        choose_device("gpu0")
    with pytest.raises(ValueError, match="not supported"):
        choose_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            choose_device("cuda")


def test_place_and_unwrap():
    rt = Runtime("cpu")
    m = torch.nn.Linear(2, 2)
    assert rt.place(m) is m and rt.is_main and rt.world_size == 1
    compiled = torch.compile(m)
    assert compiled is not m and unwrap(compiled) is m and rt.unwrap(compiled) is m
    rt.barrier()

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def padded_batch(b: int, max_len: int, vocab: int, pad_id: int = 0, min_len: int = 1) -> torch.Tensor:
    """Random ids in [pad_id+1, vocab) with right padding; lengths from min_len to max_len, the
    longest row always full so the tensor is exactly (b, max_len)."""
    lengths = torch.randint(min_len, max_len + 1, (b,))
    lengths[0] = max_len
    x = torch.randint(pad_id + 1, vocab, (b, max_len))
    x[torch.arange(max_len)[None, :] >= lengths[:, None]] = pad_id
    return x

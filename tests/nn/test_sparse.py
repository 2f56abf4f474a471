"""Long-sequence attention patterns (issue 13, ``nn/sparse.py``): every efficient form equals its
dense-masked reference (explicit softmax under the pattern's (n, n) mask) within 1e-5, forward and
gradients, with padded keys and lengths that are not whole blocks; sliding window + global tokens
equals ``transformers``' LongformerSelfAttention with copied weights."""

import pytest
import torch

from transformer_lab.nn.sparse import Pattern, attend, block_index, reference

@pytest.fixture
def fresh_flex(monkeypatch):
    """FlexAttention tests start from a clean Dynamo cache and an empty flex state (its graph budget)."""
    from transformer_lab.nn import sparse

    torch._dynamo.reset()
    monkeypatch.setattr(sparse, "_flex_attention", None)
    monkeypatch.setattr(sparse, "_FLEX_GRAPHS", set())
    monkeypatch.setattr(sparse, "_FLEX_MASKS", {})
    monkeypatch.setattr(sparse, "FLEX_MIN_N", 1)
    yield sparse
    torch._dynamo.reset()


PATTERNS = {
    "window": Pattern("window", window=3),
    "window-causal": Pattern("window", causal=True, window=4),
    "window-global": Pattern("window", window=3, global_tokens=(0, 9)),
    "block": Pattern("block", block=4, global_blocks=1, random_blocks=1, seed=3),
    "block-causal": Pattern("block", causal=True, block=4, global_blocks=1, random_blocks=2),
    "chunked": Pattern("chunked", chunk=5),
    "chunked-causal": Pattern("chunked", causal=True, chunk=6),
    "full-causal": Pattern("full", causal=True),
}


@pytest.mark.parametrize("name", list(PATTERNS))
def test_efficient_equals_the_dense_reference_forward_and_backward(name):
    torch.manual_seed(0)
    p = PATTERNS[name]
    b, h, n, d = 2, 3, 23, 8
    q, k, v = (torch.randn(b, h, n, d, requires_grad=True) for _ in range(3))
    keep = torch.ones(b, n, dtype=torch.bool)
    keep[1, -5:] = False  # row 1: five padded keys at the end
    fast, ref = attend(q, k, v, p, keep), reference(q, k, v, p, keep)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(fast)
    gf = torch.autograd.grad((fast * g).sum(), (q, k, v))
    gr = torch.autograd.grad((ref * g).sum(), (q, k, v))
    for a, r in zip(gf, gr):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)


def test_what_each_pattern_lets_a_query_see():
    n = 40
    m = Pattern("window", window=4).dense_mask(n)
    assert m[20].sum() == 9 and m[20, 16] and not m[20, 15]  # 2w + 1 keys
    assert Pattern("window", window=4, causal=True).dense_mask(n)[20].sum() == 5  # w + 1, none after
    g = Pattern("window", window=2, global_tokens=(0,)).dense_mask(n)
    assert g[0].all() and g[:, 0].all() and g[30].sum() == 6
    ids = block_index(n, 8, 1, 1, seed=0)
    assert ids.shape == (5, 5) and (ids[2, :3] == torch.tensor([1, 2, 3])).all()
    mb = Pattern("block", block=8, global_blocks=1, random_blocks=1).dense_mask(n)
    assert mb[:8].all() and mb[:, :8].all() and mb[20].sum() == 8 * 5  # own + 2 neighbours + global + 1 random
    assert torch.equal(Pattern("block", block=8, random_blocks=1, seed=5).dense_mask(n),
                       Pattern("block", block=8, random_blocks=1, seed=5).dense_mask(n))  # seeded
    assert Pattern("chunked").dense_mask(n).all()


def test_sizes_beyond_the_sequence_are_clamped_and_bad_patterns_named():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 4) for _ in range(3))
    full = attend(q, k, v, Pattern("full"))
    for p in (Pattern("window", window=100), Pattern("block", block=64, random_blocks=0), Pattern("chunked", chunk=99)):
        torch.testing.assert_close(attend(q, k, v, p), full, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="pattern"):
        Pattern("dilated")
    with pytest.raises(ValueError, match="global_tokens"):
        Pattern("window", causal=True, global_tokens=(0,))
    with pytest.raises(ValueError, match="global_tokens: positions"):
        Pattern("window", window=2, global_tokens=(0, -1))
    # a global position past a sequence's end is no token of it: a BERT trained with global:0+60 read no
    # text shorter than 61 tokens ("positions must lie in 0..n-1"); alone or padded beside a longer one
    # (the position then a padding column), the same rows as without it
    far = Pattern("window", window=2, global_tokens=(0, 7))
    for efficient in (far, Pattern("window", window=2, global_tokens=(0,))):
        torch.testing.assert_close(attend(q, k, v, far), attend(q, k, v, efficient), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(far.dense_mask(6), efficient.dense_mask(6))
    padded = [torch.cat([x, torch.randn(1, 2, 4, 4)], dim=2) for x in (q, k, v)]
    keep = torch.tensor([[True] * 6 + [False] * 4])
    torch.testing.assert_close(attend(*padded, far, keep)[:, :, :6], attend(q, k, v, far), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="keep"):
        attend(q, k, v, Pattern("window"), torch.ones(1, 5, dtype=torch.bool))


def test_window_with_global_tokens_equals_transformers_longformer():
    """LongformerSelfAttention (attention_window 2w, its global projections copied from the local
    ones) against our projections + ``attend(window=w, global_tokens)``."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

    torch.manual_seed(0)
    d, h, w, n = 32, 4, 4, 48  # n: a multiple of the attention window, as Longformer requires
    cfg = transformers.LongformerConfig(hidden_size=d, num_attention_heads=h, attention_window=[2 * w],
                                        attention_probs_dropout_prob=0.0)
    peer = LongformerSelfAttention(cfg, layer_id=0).eval()
    for name in ("query", "key", "value"):
        getattr(peer, name + "_global").load_state_dict(getattr(peer, name).state_dict())
    x = torch.randn(2, n, d)
    glob = (0, 17)
    mask = torch.zeros(2, n)
    mask[:, list(glob)] = 10000.0  # global
    mask[1, -6:] = -10000.0  # padding
    with torch.no_grad():
        want = peer(x, attention_mask=mask, is_index_masked=mask < 0, is_index_global_attn=mask > 0,
                    is_global_attn=True)[0]

        def heads(lin):
            return lin(x).view(2, n, h, d // h).transpose(1, 2)

        out = attend(heads(peer.query), heads(peer.key), heads(peer.value), Pattern("window", window=w, global_tokens=glob),
                     keep=mask >= 0)
    got = out.transpose(1, 2).reshape(2, n, d)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1, :-6], want[1, :-6], atol=1e-5, rtol=1e-5)  # padded rows: each side's own filler


def test_one_block_per_call_gives_the_same_answer(monkeypatch):
    """The block patterns bound their working memory by running groups of blocks per SDPA call;
    with a group of one block the result is the same."""
    from transformer_lab.nn import sparse

    monkeypatch.setattr(sparse, "GROUP_BYTES", 1)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 21, 4) for _ in range(3))
    keep = torch.ones(2, 21, dtype=torch.bool)
    keep[0, :3] = False
    for name in ("window", "window-global", "block-causal"):
        torch.testing.assert_close(attend(q, k, v, PATTERNS[name], keep), reference(q, k, v, PATTERNS[name], keep),
                                   atol=1e-5, rtol=1e-5)


def test_bench_attention_json(capsys):
    """`bench attention`: each configuration measured in its own process (time and peak memory), the
    headline ours / peer / ratio; a configuration that cannot run is named, not timed."""
    import json

    from transformer_lab.cli.main import main

    pytest.importorskip("transformers")
    assert main(["bench", "attention", "--lengths", "128", "--impls", "sdpa,window,dense,window+proj,longformer",
                 "--window", "16", "--heads", "2", "--d-head", "8", "--rounds", "1", "--max-dense-gib", "0.00001",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert {"ours", "peer", "ratio", "vs_longformer"} <= set(r) and r["ratio"] > 0
    rows = {row["impl"]: row for row in r["rows"]}
    assert "skipped" in rows["dense"] and rows["window"]["seconds"] > 0 and rows["window"]["peak_mib"] >= 0


@pytest.mark.parametrize("name", ["window", "window-causal", "window-global", "block", "block-causal", "chunked-causal"])
@pytest.mark.parametrize("encoding", ["alibi", "t5"])
def test_relative_position_bias_inside_the_patterns(name, encoding):
    """A score bias by distance (ALiBi, T5) asked per block of slots equals the dense reference's."""
    from transformer_lab.nn.positions import ALiBi, T5RelativeBias

    torch.manual_seed(0)
    p = PATTERNS[name]
    pos = ALiBi(3, causal=p.causal) if encoding == "alibi" else T5RelativeBias(3, causal=p.causal)
    torch.nn.init.normal_(getattr(pos, "bias", torch.nn.Linear(1, 1)).weight)

    def bias(qs, ks):
        return pos.score_bias(qs, ks)

    q, k, v = (torch.randn(2, 3, 23, 8) for _ in range(3))
    keep = torch.ones(2, 23, dtype=torch.bool)
    keep[0, -4:] = False
    with torch.no_grad():
        torch.testing.assert_close(attend(q, k, v, p, keep, bias), reference(q, k, v, p, keep, bias), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_window_equals_flexattention_with_the_window_as_its_block_mask(causal, fresh_flex):
    """A second oracle, PyTorch's FlexAttention (compiled; the peer `bench attention` times as
    flex-window): the same window as a mask_mod gives our output within 1e-5."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    torch.manual_seed(0)
    n, w = 256, 16
    q, k, v = (torch.randn(1, 2, n, 16) for _ in range(3))

    def in_window(b, h, i, j):
        return ((i - j) <= w) & ((j <= i) if causal else ((j - i) <= w))

    mask = create_block_mask(in_window, None, None, n, n, device="cpu")
    with torch.no_grad():
        want = torch.compile(flex_attention, dynamic=False)(q, k, v, block_mask=mask)
    torch.testing.assert_close(attend(q, k, v, Pattern("window", causal=causal, window=w)), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["window", "window-causal", "window-global"])
def test_the_flex_backend_equals_the_reference(name, fresh_flex):
    """backend="auto" takes FlexAttention for long no-gradient calls (``FLEX_MIN_N``, lowered here to
    reach it on a short sequence); its answer is the dense reference's. Where flex cannot run (key
    padding, gradients) auto stays on SDPA and "flex" is a clear error."""
    torch.manual_seed(0)
    p = PATTERNS[name]
    q, k, v = (torch.randn(1, 2, 40, 8) for _ in range(3))
    with torch.no_grad():
        torch.testing.assert_close(attend(q, k, v, p), reference(q, k, v, p), atol=1e-5, rtol=1e-5)
    if name == "window":
        keep = torch.ones(1, 40, dtype=torch.bool)
        keep[0, -3:] = False
        with pytest.raises(ValueError, match="flex"):
            attend(q, k, v, p, keep, backend="flex")
        with pytest.raises(ValueError, match="block-sparse"):
            attend(q, k, v, PATTERNS["block"], backend="flex")
        q.requires_grad_(True)
        attend(q, k, v, p).sum().backward()  # auto: the SDPA path, which has a backward
        assert q.grad is not None


@pytest.mark.parametrize("encoding", ["alibi", "t5"])
@pytest.mark.parametrize("causal", [False, True])
def test_flex_with_a_position_score_mod_equals_the_biased_reference(encoding, causal, fresh_flex):
    """ALiBi and T5 give FlexAttention their bias elementwise (``score_mod``); a window call on flex then
    equals the dense reference with the tensor bias."""
    from transformer_lab.nn.positions import ALiBi, T5RelativeBias

    torch.manual_seed(0)
    pos = ALiBi(2, causal=causal) if encoding == "alibi" else T5RelativeBias(2, causal=causal)
    if encoding == "t5":
        torch.nn.init.normal_(pos.bias.weight)
    slots = torch.arange(40)
    p = Pattern("window", causal=causal, window=6)
    q, k, v = (torch.randn(1, 2, 40, 8) for _ in range(3))

    def bias(qs, ks):
        return pos.score_bias(qs, ks)

    with torch.no_grad():
        got = attend(q, k, v, p, bias=bias, backend="flex", score_mod=pos.score_mod(slots))
        torch.testing.assert_close(got, reference(q, k, v, p, bias=bias), atol=1e-5, rtol=1e-5)


def test_auto_keeps_flex_to_a_few_static_graphs(fresh_flex, monkeypatch):
    """Each new length compiles a static FlexAttention graph (dynamic shapes do not compile on CPU in
    torch 2.13); past FLEX_MAX_GRAPHS of them, "auto" takes the SDPA path, with the same answer."""
    sparse = fresh_flex
    monkeypatch.setattr(sparse, "FLEX_MAX_GRAPHS", 1)
    calls, flex = [], sparse._flex
    monkeypatch.setattr(sparse, "_flex", lambda *a: calls.append(a[0].size(2)) or flex(*a))
    p = Pattern("window", causal=True, window=4)
    with torch.no_grad():
        for n in (24, 24, 31):
            q, k, v = (torch.randn(1, 2, n, 8) for _ in range(3))
            torch.testing.assert_close(attend(q, k, v, p), reference(q, k, v, p), atol=1e-5, rtol=1e-5)
    assert calls == [24, 24]  # the second length went to SDPA

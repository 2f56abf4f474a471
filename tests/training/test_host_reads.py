"""Issue 14: a training step on a GPU reads nothing back to the host, model included.

The model's per-batch input checks (ids in range, positions within the table) read values back: a host
sync on a GPU, four per forward. Each task's loss carries ``check_batch``, which checks the batch on the
host before it moves, and the trainer runs the step inside ``values_checked()``. These tests run the GPU's
setting on a CPU (``defer_finite_check``) and patch every way a tensor reaches the host: a read from any
file of the trainer, the tasks' losses, the models or the embeddings fails the test, except inside
``check_on_host`` (the batch before it moves: on a GPU, host memory). The attention layers
are left out: on a CPU they take CPU-only paths that read masks (free there; not taken on a GPU).
"""

import traceback

import pytest
import torch
import torch.nn.functional as F

from transformer_lab.data.batches import ClassBatch, LMBatch, PretrainBatch, ShuffledBatches
from transformer_lab.data.mlm import IGNORE
from transformer_lab.data.synthetic import DateTask
from transformer_lab.data.vocab import Vocab
from transformer_lab.models.bert import Bert, BertConfig
from transformer_lab.models.gpt import GPT, GPTConfig
from transformer_lab.models.presets import preset
from transformer_lab.models.transformer import Transformer
from transformer_lab.nn.checks import values_checked
from transformer_lab.tasks.classify import classification_loss
from transformer_lab.tasks.lm import lm_loss
from transformer_lab.tasks.pretrain_bert import pretrain_loss
from transformer_lab.tasks.translation import seq2seq_loss
from transformer_lab.training.config import TrainConfig
from transformer_lab.training.loop import Trainer

VOCAB = Vocab(DateTask.symbols())
PAIRS = DateTask(first_year=1990, last_year=1990, n_test=5).pairs()[0]


def seq2seq_model() -> Transformer:
    torch.manual_seed(3)
    return Transformer(preset("tiny", src_vocab_size=len(VOCAB), tgt_vocab_size=len(VOCAB), d_model=32, d_ff=64,
                              n_heads=2))

WATCHED = ("training/loop.py", "training/losses.py", "tasks/translation.py", "tasks/lm.py", "tasks/classify.py",
           "tasks/pretrain_bert.py", "/models/transformer.py", "/models/gpt.py", "/models/bert.py",
           "nn/embeddings.py", "nn/positions.py")
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


class Fixed:
    """A batch source of one batch, again and again."""

    def __init__(self, batch):
        self.batch = batch

    def __len__(self):
        return 1

    def epoch(self, epoch):
        return [[0]]

    def make(self, indices):
        return self.batch


def reads_in_one_step(trainer: Trainer, monkeypatch) -> list[str]:
    trainer.defer_finite_check = True  # the GPU's setting
    reads = []

    def reading(original, name):
        def read(self, *a):
            stack = traceback.extract_stack()
            caller = stack[-2]
            on_host = any(f.name == "check_on_host" for f in stack)  # the batch's own tensors, before they move
            if caller.filename.endswith(WATCHED) and not on_host:
                reads.append(f"{name} at {caller.filename}:{caller.lineno}")
            return original(self, *a)
        return read

    with monkeypatch.context() as m:
        for name in READS:
            m.setattr(torch.Tensor, name, reading(getattr(torch.Tensor, name), name))
        trainer.train_step(*trainer._next_batches())
    return reads


def gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=40, max_len=16, d_model=32, n_heads=2, n_layers=1, d_ff=64))


def bert(**kw) -> Bert:
    torch.manual_seed(0)
    return Bert(BertConfig(vocab_size=40, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=16, **kw))


def lm_batch() -> LMBatch:
    ids = torch.randint(0, 40, (2, 13), generator=torch.Generator().manual_seed(1))
    return LMBatch(ids[:, :-1], ids[:, 1:])


def pretrain_batch() -> PretrainBatch:
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(5, 40, (3, 10), generator=g)
    labels = torch.full_like(tokens, IGNORE)
    labels[:, 2] = tokens[:, 2]
    labels[1, 7] = tokens[1, 7]
    segments = torch.zeros_like(tokens)
    segments[:, 5:] = 1
    return PretrainBatch(tokens, segments, torch.ones_like(tokens, dtype=torch.bool), labels, torch.tensor([0, 1, 0]))


def class_batch() -> ClassBatch:
    tokens = torch.randint(5, 40, (3, 8), generator=torch.Generator().manual_seed(3))
    return ClassBatch(tokens, torch.ones_like(tokens), torch.tensor([0, 1, 1]))


CFG = dict(max_steps=1, warmup=1, log_every=1, progress=False)
TASKS = {
    "translation": lambda: (seq2seq_model(), ShuffledBatches(PAIRS, VOCAB, 32, seed=1), seq2seq_loss(0.1)),
    "lm": lambda: (gpt(), Fixed(lm_batch()), lm_loss),
    "bert-pretraining": lambda: (bert(pretraining_heads=True), Fixed(pretrain_batch()), pretrain_loss(nsp=True)),
    "classification": lambda: (bert(n_labels=2), Fixed(class_batch()), classification_loss),
}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_gpu_step_reads_nothing_back_and_the_ids_are_still_checked(task, tmp_path, monkeypatch):
    """No read in a step from any watched file (the models' own checks included); the same step with an id
    out of range is still the models' clear error, raised on the host before the batch moves."""
    m, source, loss = TASKS[task]()
    t = Trainer(m, source, TrainConfig(**CFG), tmp_path / "a", loss)
    assert reads_in_one_step(t, monkeypatch) == []
    m, source, loss = TASKS[task]()
    bad = source.make(source.epoch(0)[0])
    first = next(f for f in ("src", "x", "tokens") if hasattr(bad, f))
    getattr(bad, first)[0, 0] = 40 if task != "translation" else len(VOCAB)
    t = Trainer(m, Fixed(bad), TrainConfig(**CFG), tmp_path / "b", loss)
    with pytest.raises(ValueError, match=r"token id \d+ is out of range"):
        t.train_step(*t._next_batches())


def test_without_the_host_check_the_model_reads_its_ids(tmp_path, monkeypatch):
    """The control: the same LM step with a loss that carries no ``check_batch`` reads the ids back in the
    model (so the test above can see a read where there is one)."""
    t = Trainer(gpt(), Fixed(lm_batch()), TrainConfig(**CFG), tmp_path, lambda *a: lm_loss(*a))
    reads = reads_in_one_step(t, monkeypatch)
    assert any("nn/embeddings.py" in r for r in reads), reads


def test_a_compiled_step_still_refuses_an_id_out_of_range(tmp_path):
    """Under --compile the models skip their value checks (they would break the graph): the task's host
    check keeps the clear error, before anything is compiled."""
    batch = lm_batch()
    batch.x[1, 3] = 99
    t = Trainer(gpt(), Fixed(batch), TrainConfig(compile=True, **CFG), tmp_path, lm_loss)
    with pytest.raises(ValueError, match="tokens: token id 99 is out of range; expected 0 <= id < vocab_size=40"):
        t.train_step(*t._next_batches())


def test_inside_values_checked_the_models_check_shapes_only():
    """``values_checked`` skips the value reads, not the free checks: a wrong shape or an overlong input is
    still refused by shape, with the same messages as outside."""
    m = gpt().eval()
    for ctx in (values_checked, __import__("contextlib").nullcontext):
        with ctx():
            with pytest.raises(ValueError, match="expected shape"):
                m(torch.tensor([1, 2, 3]))
            with pytest.raises(ValueError, match="max_len=16"):
                m(torch.ones(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="out of range"):
        m(torch.tensor([[1, 2, 99]]))


def test_bert_pretraining_gathers_the_masked_positions_by_index():
    """A boolean index (``hidden[mask]``) reads the mask's count back inside PyTorch (a sync the patches above
    cannot see), so the pre-training loss hands the model flat indices found on the host; the MLM logits are
    those of the boolean mask, row for row."""
    m = bert(pretraining_heads=True).eval()
    b = pretrain_batch()
    seen = []
    m.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs["mlm_positions"]), with_kwargs=True)
    res = pretrain_loss(nsp=False)(m, b, torch.device("cpu"))
    assert seen[0].dtype == torch.int64 and seen[0].tolist() == [2, 12, 17, 22]
    selected = b.labels != IGNORE
    by_mask = m(b.tokens, b.segments, b.attention_mask, mlm_positions=selected).mlm_logits
    by_index = m(b.tokens, b.segments, b.attention_mask, mlm_positions=seen[0]).mlm_logits
    torch.testing.assert_close(by_index, by_mask, rtol=0, atol=0)
    expected = torch.nn.functional.cross_entropy(by_mask, b.labels[selected])  # (the mean: the trainer divides the parts)
    torch.testing.assert_close(res.loss, expected)
    with pytest.raises(ValueError, match="mlm_positions: expected a bool"):
        m(b.tokens, mlm_positions=torch.tensor([0.5]))
    with pytest.raises(ValueError, match=r"mlm_positions: expected a mask of shape \(3, 10\)"):
        m(b.tokens, mlm_positions=selected[:, :4])


def test_the_bert_pretraining_loss_is_one_graph_under_compile():
    """The loss the trainer compiles (the model inside it) has no graph break: the masked positions and
    their ids come with the batch, found when it was made (oracle: ``torch._dynamo.explain``)."""
    torch._dynamo.reset()
    explained = torch._dynamo.explain(pretrain_loss(nsp=True))(bert(pretraining_heads=True), pretrain_batch(),
                                                               torch.device("cpu"))
    assert explained.graph_break_count == 0, [str(r.reason)[:120] for r in explained.break_reasons]
    assert explained.graph_count == 1


def test_bert_pretraining_micro_batches_take_the_gradients_of_one_batch(tmp_path):
    """Micro-batches with different numbers of masked tokens (1 and 3 here) give the gradients of one
    batch, as BERT defines its loss: the MLM mean over every masked token of the step plus the NSP mean
    over its pairs, written out with torch's F.cross_entropy on the whole batch (float64; the task's loss
    takes its cross-entropy in float32, hence 1e-6: the per-sequence weighting this replaces was 1e-3 off)."""
    whole = pretrain_batch()
    halves = [PretrainBatch(*(t[rows] for t in (whole.tokens, whole.segments, whole.attention_mask, whole.labels,
                                                 whole.not_next))) for rows in (slice(0, 1), slice(1, 3))]
    assert [len(h.mlm_targets) for h in halves] == [1, 3]
    m = bert(pretraining_heads=True).double()
    m.eval()  # (dropout off)
    out = m(whole.tokens, whole.segments, whole.attention_mask, mlm_positions=whole.mlm_positions)
    (F.cross_entropy(out.mlm_logits, whole.mlm_targets) + F.cross_entropy(out.nsp_logits, whole.not_next)).backward()
    expected = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    trainer = Trainer(m, Fixed(whole), TrainConfig(**CFG, dropout=0.0), tmp_path, pretrain_loss(nsp=True))
    row = trainer.backward(halves)
    for n, p in m.named_parameters():
        if n in expected:
            assert (p.grad - expected[n]).abs().max() <= 1e-6 * expected[n].abs().max() + 1e-15, n  # (w_k.bias: 0)
    direct = F.cross_entropy(out.mlm_logits, whole.mlm_targets) + F.cross_entropy(out.nsp_logits, whole.not_next)
    assert float(row["loss"]) == pytest.approx(float(direct.detach()), rel=1e-6)
    assert float(row["nll"]) == pytest.approx(float(F.cross_entropy(out.mlm_logits, whole.mlm_targets)), rel=1e-6)

"""Every question, in the canon's order: an experiment, or a placeholder naming the feature it needs."""

from __future__ import annotations

from transformer_lab.experiments.base import Experiment, pending
from transformer_lab.experiments.questions.batch_ppl import BatchPerplexity
from transformer_lab.experiments.questions.bpe_wordpiece import BPEWordPiece
from transformer_lab.experiments.questions.causal_mask import CausalMask
from transformer_lab.experiments.questions.cross_attention import CrossAttention
from transformer_lab.experiments.questions.decoder_parallel import DecoderParallel
from transformer_lab.experiments.questions.dot_vs_additive import DotVsAdditive
from transformer_lab.experiments.questions.dropout import Dropout
from transformer_lab.experiments.questions.embedding_scale import EmbeddingScale
from transformer_lab.experiments.questions.ffn import FeedForward
from transformer_lab.experiments.questions.head_dim import HeadDim
from transformer_lab.experiments.questions.interpretability import Interpretability
from transformer_lab.experiments.questions.label_smoothing import LabelSmoothing
from transformer_lab.experiments.questions.layernorm import LayerNormQuestion
from transformer_lab.experiments.questions.mixed_precision import MixedPrecision
from transformer_lab.experiments.questions.multi_head import MultiHead
from transformer_lab.experiments.questions.neuron_importance import NeuronImportance
from transformer_lab.experiments.questions.norm_position import NormPosition
from transformer_lab.experiments.questions.overfitting import Overfitting
from transformer_lab.experiments.questions.padding_mask import PaddingMask
from transformer_lab.experiments.questions.qk_weights import QKWeights
from transformer_lab.experiments.questions.residual import Residual
from transformer_lab.experiments.questions.scaling import Scaling
from transformer_lab.experiments.questions.sinusoids import Sinusoids
from transformer_lab.experiments.questions.slowest_part import SlowestPart
from transformer_lab.experiments.questions.universal import Universal
from transformer_lab.experiments.questions.vs_rnn import VsRNN
from transformer_lab.experiments.questions.warmup import Warmup

EXPERIMENTS: list[Experiment] = [
    Scaling(),
    PaddingMask(),
    HeadDim(),
    Sinusoids(),
    SlowestPart(),
    DecoderParallel(),
    Universal(),
    MixedPrecision(),
    CausalMask(),
    LabelSmoothing(),
    QKWeights(),
    EmbeddingScale(),
    MultiHead(),
    Residual(),
    BPEWordPiece(),
    BatchPerplexity(),
    Overfitting(),
    VsRNN(),
    DotVsAdditive(),
    CrossAttention(),
    Interpretability(),
    NeuronImportance(),
    LayerNormQuestion(),
    NormPosition(),
    FeedForward(),
    Warmup(),
    Dropout(),
]

_IN_PROGRESS = "its experiment (issue 10, still being written)"
# The rest of the canon, in its order: questions whose experiment is not written yet, and questions
# that need a feature of a later issue. Listed by `explain --list`, never run.
EXPERIMENTS += [pending(*q) for q in [
    ("positions", "你还了解哪些关于位置编码的技术，各自的优缺点是什么？", "Other position encodings?",
     "learned, relative, hybrid, …", "ALiBi, T5 and Shaw relative positions (issue 13)"),
    ("bert-mask", "bert的mask为何不学习transformer在attention处进行屏蔽score的技巧？",
     "Why does BERT mask tokens, not attention scores?",
     "attention masking would hide context; BERT needs bidirectional context", _IN_PROGRESS),
    ("nsp", "Bert中NSP可能的问题有些哪些？如何改进？可以去掉NSP训练任务吗？", "NSP's problems; can it be removed?",
     "\"negative samples may far outnumber positives\"; NSP adds cost; can be dropped", _IN_PROGRESS),
    ("mask-80-10-10", "（MLM的80%/10%/10%替换策略）", "Why 80/10/10 masking?",
     "reduces the pre-train / fine-tune mismatch", _IN_PROGRESS),
    ("int8", "为何在对Transformer进行参数的Quantization的时候工业界最终选择了INT8？包括KL散度、长尾分布等",
     "Why INT8; KL calibration; long tails",
     "INT8 balances size and accuracy; KL calibration; dynamic quantization keeps accuracy", "INT8 quantization (issue 12)"),
    ("pretrain-finetune", "简要描述预训练和微调(Fine-Tuning)", "Pre-training vs fine-tuning",
     "pre-training transfers knowledge to small labelled sets", _IN_PROGRESS),
    ("peft", "业界常用的PEFT方案：Prompt Tuning、Prefix Tuning、LoRA、QLoRA", "Parameter-efficient fine-tuning",
     "far fewer trainable parameters at similar quality", "LoRA, QLoRA, prefix and prompt tuning (issue 11)"),
    ("long-sequences", "（长序列：优化自注意力机制、分块策略、层次化注意力）", "Long sequences",
     "attention is O(n²); sparse / local attention, chunking, compression, hierarchy",
     "chunked, sliding-window and block-sparse attention (issue 13)"),
    ("deployment", "设想你需要在不同的硬件配置上部署Transformer模型，你会考虑哪些因素以及可能采用的优化策略？",
     "Deploying on different hardware", "quantization, pruning, distillation, batching, hardware-specific kernels",
     "INT8, export and serving (issue 12)"),
]]
CANON_ORDER = ["multi-head", "scaling", "qk-weights", "dot-vs-additive", "padding-mask", "head-dim", "embedding-scale",
               "sinusoids", "positions", "residual", "layernorm", "norm-position", "ffn", "slowest-part",
               "cross-attention", "decoder-parallel", "causal-mask", "bpe-wordpiece", "warmup", "dropout",
               "label-smoothing", "bert-mask", "nsp", "mask-80-10-10", "batch-ppl", "int8", "universal",
               "neuron-importance", "pretrain-finetune", "peft", "long-sequences", "overfitting", "mixed-precision",
               "vs-rnn", "interpretability", "deployment"]
EXPERIMENTS.sort(key=lambda e: CANON_ORDER.index(e.id))


def get(exp_id: str) -> Experiment:
    for exp in EXPERIMENTS:
        if exp.id == exp_id:
            return exp
    raise ValueError(f"experiment: unknown id {exp_id!r}; expected one of {[e.id for e in EXPERIMENTS]}")

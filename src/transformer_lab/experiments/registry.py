"""Every question, in the canon's order: an experiment, or a placeholder naming the feature it needs."""

from __future__ import annotations

from transformer_lab.experiments.base import Experiment
from transformer_lab.experiments.questions.batch_ppl import BatchPerplexity
from transformer_lab.experiments.questions.bert_mask import BertMask
from transformer_lab.experiments.questions.bpe_wordpiece import BPEWordPiece
from transformer_lab.experiments.questions.causal_mask import CausalMask
from transformer_lab.experiments.questions.cross_attention import CrossAttention
from transformer_lab.experiments.questions.decoder_parallel import DecoderParallel
from transformer_lab.experiments.questions.deployment import Deployment
from transformer_lab.experiments.questions.dot_vs_additive import DotVsAdditive
from transformer_lab.experiments.questions.dropout import Dropout
from transformer_lab.experiments.questions.embedding_scale import EmbeddingScale
from transformer_lab.experiments.questions.ffn import FeedForward
from transformer_lab.experiments.questions.head_dim import HeadDim
from transformer_lab.experiments.questions.int8 import Int8
from transformer_lab.experiments.questions.interpretability import Interpretability
from transformer_lab.experiments.questions.label_smoothing import LabelSmoothing
from transformer_lab.experiments.questions.layernorm import LayerNormQuestion
from transformer_lab.experiments.questions.long_sequences import LongSequences
from transformer_lab.experiments.questions.mask_80_10_10 import Mask801010
from transformer_lab.experiments.questions.mixed_precision import MixedPrecision
from transformer_lab.experiments.questions.multi_head import MultiHead
from transformer_lab.experiments.questions.neuron_importance import NeuronImportance
from transformer_lab.experiments.questions.norm_position import NormPosition
from transformer_lab.experiments.questions.nsp import NSP
from transformer_lab.experiments.questions.overfitting import Overfitting
from transformer_lab.experiments.questions.padding_mask import PaddingMask
from transformer_lab.experiments.questions.peft import Peft
from transformer_lab.experiments.questions.positions import Positions
from transformer_lab.experiments.questions.pretrain_finetune import PretrainFinetune
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
    BertMask(),
    NSP(),
    Mask801010(),
    PretrainFinetune(),
    Peft(),
    Int8(),
    Deployment(),
    Positions(),
    LongSequences(),
]

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

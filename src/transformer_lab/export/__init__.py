"""Deployment formats: ONNX graphs of our models that onnxruntime (or any ONNX runtime) executes.

    onnx     export_bert / export_gpt / export_translation (encoder + decoder step with a KV cache),
             the ORT sessions that run them (``OnnxSeq2SeqStep`` drives our greedy and beam search)
"""

from transformer_lab.export.onnx import (MAX_OPSET, MIN_OPSET, OnnxSeq2SeqStep, bert_inputs, export_bert, export_gpt,
                                         export_model, export_translation, gpt_inputs, onnx_session)

__all__ = ["MAX_OPSET", "MIN_OPSET", "OnnxSeq2SeqStep", "bert_inputs", "export_bert", "export_gpt", "export_model", "export_translation", "gpt_inputs",
           "onnx_session"]

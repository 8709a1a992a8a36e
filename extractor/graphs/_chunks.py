"""Run a graph that takes only a fixed batch inside a feature graph that takes any batch.

A foreign graph whose batch could not be made dynamic (``featurebank.export._batch``) runs
inside an ONNX ``Scan``: the batch of N images is padded to a multiple of the graph's batch B,
reshaped to ``[N/B, B, ...]``, the graph runs once per chunk of B, and the cut tensors are
joined back to ``[N, ...]``. Everything stays in the one feature graph, so every runner of it
(the extractor, the Ray engine, the service) works unchanged.
"""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from featurebank.errors import FeaturebankError

_END = np.iinfo(np.int64).max


def run_in_chunks(nodes: list, initializers: list, model_input: tuple[str, int], source: str,
                  targets: dict[str, tuple[int, int]], batch: int,
                  opset: int) -> tuple[list, list, dict[str, str]]:
    """Nodes that compute ``targets`` (tensor -> (rank, ONNX element type)) for a batch
    ``source`` of any size with ``nodes``, which read ``model_input`` (name, element type) and
    run only on batches of ``batch``.

    Returns the outer nodes, their initializers, and target -> its name in the outer graph
    (``[N, ...]``, in the order of ``source``).
    """
    if opset < 11:
        raise FeaturebankError(
            f"the model runs only at a batch of {batch} and its ONNX opset {opset} is older than "
            f"11, which featurebank needs to feed it chunks; convert it to a newer opset "
            f"(onnx.version_converter) or export it with a dynamic batch axis")
    nodes_out: list = []
    inits: list = []

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, np.int64), f"fb.chunk.{name}"))
        return f"fb.chunk.{name}"

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes_out.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    shape = node("Shape", [source], "fb.chunk.shape")
    n = node("Slice", [shape, const("zero", [0]), const("one", [1])], "fb.chunk.n")
    padded = source
    if batch > 1:  # pad with zero images up to a multiple of the batch; they are cut off below
        b = const("b", [batch])
        missing = node("Mod", [node("Sub", [b, node("Mod", [n, b], "fb.chunk.r")], "fb.chunk.s"),
                               b], "fb.chunk.missing")
        rank = 4
        pads = node("Concat", [const("pads0", [0] * rank), missing, const("pads1", [0] * (rank - 1))],
                    "fb.chunk.pads", axis=0)
        padded = node("Pad", [source, pads], "fb.chunk.padded")
    rest = node("Slice", [shape, const("one_", [1]), const("end", [_END])], "fb.chunk.rest")
    chunked = node("Reshape", [padded, node("Concat", [const("m", [-1, batch]), rest],
                                            "fb.chunk.to", axis=0)], "fb.chunk.chunks")
    body = helper.make_graph(
        nodes, "fb_chunk", [helper.make_tensor_value_info(*model_input, None)],
        # onnxruntime wants the rank of a Scan body's outputs
        [helper.make_tensor_value_info(t, elem_type, [None] * rank)
         for t, (rank, elem_type) in targets.items()],
        initializer=initializers)
    stacked = [f"fb.chunk.out{i}" for i in range(len(targets))]
    nodes_out.append(helper.make_node("Scan", [chunked], stacked, body=body, num_scan_inputs=1))
    where = {}
    for i, (target, out) in enumerate(zip(targets, stacked, strict=True)):
        tail = node("Slice", [node("Shape", [out], f"fb.chunk.oshape{i}"), const("two", [2]),
                              const("end", [_END])], f"fb.chunk.otail{i}")
        flat = node("Reshape", [out, node("Concat", [const("minus1", [-1]), tail],
                                          f"fb.chunk.oto{i}", axis=0)], f"fb.chunk.flat{i}")
        if batch > 1:
            flat = node("Slice", [flat, const("zero", [0]), n, const("zero", [0])],
                        f"fb.chunk.kept{i}")
        where[target] = flat
    unique = {t.name: t for t in inits}  # const() may name a value twice
    return nodes_out, list(unique.values()), where


"""The optimised-graph cache (extractor/graphs/_sessions.py): kept for ordinary graphs, not for
a small graph whose ConstantOfShape weights fold into a large constant (the onnx package's
structure-only model-zoo graphs filled the test cache with 2 GB of them)."""

from __future__ import annotations

import uuid

import numpy as np
import onnx
from onnx import TensorProto, helper

from featurebank.export import cache_dir
from featurebank.extractor.graphs import make_session


def _matmul_graph(n: int, folded: bool) -> onnx.ModelProto:
    """x [1, n] @ W [n, n]: W made by ConstantOfShape (folds into n*n floats) or stored."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])
    if folded:
        shape = helper.make_tensor("shape", TensorProto.INT64, [2], [n, n])
        nodes = [helper.make_node("ConstantOfShape", ["shape"], ["w"],
                                  value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5])),
                 helper.make_node("MatMul", ["x", "w"], ["y"])]
        inits = [shape]
    else:
        w = np.full((n, n), 0.5, np.float32)
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
        inits = [onnx.numpy_helper.from_array(w, "w")]
    # a name of its own: a graph the warm test cache already holds would add no file
    graph = helper.make_graph(nodes, f"g-{uuid.uuid4().hex}", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _cached_files() -> list:
    folder = cache_dir() / "optimized"
    return sorted(folder.glob("*.onnx")) if folder.exists() else []


def test_a_graph_that_folds_into_large_constants_is_not_cached(model_cache):
    before = set(_cached_files())
    n = 2500  # 25 MB of folded weights from a graph of a few hundred bytes
    session = make_session(_matmul_graph(n, folded=True), device="cpu", threads=1)
    out = session.run(None, {"x": np.ones((1, n), np.float32)})[0]
    np.testing.assert_allclose(out, np.full((1, n), 0.5 * n), rtol=1e-5)
    assert set(_cached_files()) == before  # answered, but nothing large written

    small = make_session(_matmul_graph(64, folded=False), device="cpu", threads=1)
    assert small.run(None, {"x": np.ones((1, 64), np.float32)})[0][0, 0] == 32.0
    assert len(set(_cached_files()) - before) == 1  # an ordinary graph is still cached

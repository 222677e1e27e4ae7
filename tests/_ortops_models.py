"""Tiny ONNX models calling the custom ops of libcrosslayer_ortops (domain ai.crosslayer, opset 1), shared by the
Python onnxruntime test and the C++ runner test."""

import numpy as np

DOMAIN = "ai.crosslayer"


def pool_model(op: str, pca: bool, ranked: bool = True) -> bytes:
    """One `op` node ("PoolCodes" or "PoolFloat") over graph inputs local, guidance (and pca_mean, pca_projection
    when `pca`; otherwise the node passes empty names for them, as the exporter does). Dynamic shapes; with
    `ranked` False not even the ranks are declared, so onnxruntime leaves every shape check to the op."""
    from onnx import TensorProto, helper

    def dims(*names):
        return list(names) if ranked else None

    inputs = [
        helper.make_tensor_value_info("local", TensorProto.FLOAT, dims("n", "dt_in", "h", "w")),
        helper.make_tensor_value_info("guidance", TensorProto.FLOAT, dims("n", "dk", "h", "w")),
    ]
    if pca:
        inputs += [
            helper.make_tensor_value_info("pca_mean", TensorProto.FLOAT, dims("dt_in")),
            helper.make_tensor_value_info("pca_projection", TensorProto.FLOAT, dims("dt_in", "dt")),
        ]
    node_inputs = ["local", "guidance"] + (["pca_mean", "pca_projection"] if pca else ["", ""])
    if op == "PoolCodes":
        outputs = [helper.make_tensor_value_info("bits", TensorProto.UINT64, None),
                   helper.make_tensor_value_info("channel_mean", TensorProto.FLOAT, None)]
    else:
        outputs = [helper.make_tensor_value_info("representation", TensorProto.FLOAT, None)]
    node = helper.make_node(op, node_inputs, [o.name for o in outputs], domain=DOMAIN)
    graph = helper.make_graph([node], f"crosslayer_{op}", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    model.ir_version = 8
    return model.SerializeToString()


def random_inputs(rng, n, dt_in, dk, h, w, dt=None):
    """Post-ReLU-like activations (many exact zeros, so zero channels and zero signs occur) and an optional PCA."""
    local = np.maximum(rng.standard_normal((n, dt_in, h, w)), 0).astype(np.float32)
    guidance = np.maximum(rng.standard_normal((n, dk, h, w)), 0).astype(np.float32)
    if dt is None:
        return {"local": local, "guidance": guidance}
    mean = rng.standard_normal(dt_in).astype(np.float32)
    projection = rng.standard_normal((dt_in, dt)).astype(np.float32)
    return {"local": local, "guidance": guidance, "pca_mean": mean, "pca_projection": projection}

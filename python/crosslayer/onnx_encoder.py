"""A fitted `CrossLayerEncoder` as one ONNX model: pixels in, sign codes out, for runtimes without Python.

Input ``images``: uint8 (n, side, side, 3) RGB, resized by the encoder's policy (`CrossLayerEncoder.load_pixels`).
The graph normalises them, runs the encoder's own cached backbone export (`crosslayer.backbones.export`), applies the
PCA, pools and packs the signs. Outputs: ``bits`` uint64 (n, Dk, 2, ceil(Dt/64)) in the 2-plane `Codes.bits` layout
(`Codes.compact()` halves it, as `encode` does), ``channel_mean`` float32 (n, Dk), and with ``embedding=True`` the
backbone's global ``embedding`` (n, C).

Two forms of the pooling:
- ``ops="standard"``: standard ONNX operators (opset of the backbone export, 17). onnxruntime's ReduceSum is inexact
  on large int64 values and has no uint64 kernel, so each 64-bit word is built from four 16-bit chunks summed in
  int32 (exact: below 2^16) and joined with BitShift and Add (the chunks' bits are disjoint, so Add is an OR).
- ``ops="custom"``: one ``PoolCodes`` node of the domain ``ai.crosslayer`` (opset 1), the library
  `crosslayer.ort_ops_library()` registered with onnxruntime (`register_custom_ops_library`) computes it with the
  same kernel as `crosslayer.pool`.
The encoder's identity is in the model's ``metadata_props``: ``identity_digest`` is the `CrossLayerEncoder.identity_digest`
to stamp the graph's codes with (``crosslayer.Codes(bits, channel_mean, Dt, identity=...)``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from crosslayer.errors import UsageError

OPS = ("standard", "custom")
CUSTOM_DOMAIN = "ai.crosslayer"
CUSTOM_OPSET = 1
MODEL_FORMAT = "crosslayer-encoder-onnx"
MODEL_VERSION = 1
INPUT = "images"
BITS, CHANNEL_MEAN, EMBEDDING = "bits", "channel_mean", "embedding"
GRAPH_CHECKSUM = "graph_sha256"  # of the serialised graph: `model_metadata` checks it
_NORMALIZED = "crosslayer_normalized_images"  # the backbone's own input, renamed
_CHUNK_BITS = 16  # a word's bits are summed in chunks this wide: exact in int32 ReduceSum


def _encoder(encoder_or_path):
    from crosslayer.encoder import CrossLayerEncoder

    if isinstance(encoder_or_path, CrossLayerEncoder):
        encoder_or_path._check_fitted()
        return encoder_or_path
    if isinstance(encoder_or_path, (str, Path)):
        return CrossLayerEncoder.load(encoder_or_path)
    raise UsageError(f"encoder_or_path: expected a fitted CrossLayerEncoder or an encoder file path, "
                     f"got {type(encoder_or_path).__name__}")


class _GraphBuilder:
    """Appends nodes named with a common prefix, so they never clash with the backbone's names."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, hint: str, array) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs, hint: str, outputs: int | list = 1, domain: str = "", **attributes):
        from onnx import helper

        names = outputs if isinstance(outputs, list) else [self.name(hint) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=self.name(f"{hint}_node"),
                                           domain=domain, **attributes))
        return names[0] if len(names) == 1 else names


def _normalisation(builder: _GraphBuilder, spec) -> None:
    """uint8 NHWC pixels -> the backbone's float32 NCHW input, x * scale - offset as `images.normalize` does."""
    from onnx import TensorProto

    from crosslayer.images import normalization

    scale, offset = normalization(spec.mean, spec.std)
    nchw = builder.op("Transpose", [INPUT], "nchw", perm=[0, 3, 1, 2])  # on the bytes: a quarter of the traffic
    pixels = builder.op("Cast", [nchw], "pixels", to=TensorProto.FLOAT)
    scaled = builder.op("Mul", [pixels, builder.const("scale", scale.reshape(1, 3, 1, 1))], "scaled")
    builder.op("Sub", [scaled, builder.const("offset", offset.reshape(1, 3, 1, 1))], "normalized",
               outputs=[_NORMALIZED])


def _channel_mean(builder: _GraphBuilder, guidance: str) -> None:
    """Summed in float64 and rounded once, as the CPU kernel does, so both agree to the last float32 bit or so."""
    from onnx import TensorProto

    wide = builder.op("Cast", [guidance], "guidance_f64", to=TensorProto.DOUBLE)
    mean = builder.op("ReduceMean", [wide], "mean_f64", axes=[2, 3], keepdims=0)
    builder.op("Cast", [mean], "channel_mean", outputs=[CHANNEL_MEAN], to=TensorProto.FLOAT)


def _flattened_positions(builder: _GraphBuilder, maps: str, hint: str) -> str:
    """(n, C, h, w) -> (n, C, h*w) with every dimension taken from the maps' shape: Reshape cannot infer a -1 from
    an empty batch (n = 0)."""
    leading = builder.op("Shape", [maps], f"{hint}_leading", start=0, end=2)
    height = builder.op("Shape", [maps], f"{hint}_height", start=2, end=3)
    width = builder.op("Shape", [maps], f"{hint}_width", start=3, end=4)
    positions = builder.op("Mul", [height, width], f"{hint}_positions")
    shape = builder.op("Concat", [leading, positions], f"{hint}_shape", axis=0)
    return builder.op("Reshape", [maps, shape], hint)


def _pooled(builder: _GraphBuilder, local: str, guidance: str, pca) -> str:
    """P (n, Dk, Dt) float32 = guidance (n, Dk, HW) @ ((local rows (n, HW, Dt_in) - mean) @ projection)."""
    rows = builder.op("Transpose", [_flattened_positions(builder, local, "local")], "rows", perm=[0, 2, 1])
    centred = builder.op("Sub", [rows, builder.const("pca_mean", pca[0].astype(np.float32))], "centred")
    projected = builder.op("MatMul", [centred, builder.const("pca_projection", pca[1].astype(np.float32))], "projected")
    return builder.op("MatMul", [_flattened_positions(builder, guidance, "guidance"), projected], "pooled")


def _packed_signs(builder: _GraphBuilder, pooled: str, dk: int, dt: int) -> None:
    """P (n, Dk, Dt) -> bits (n, Dk, 2, words) uint64: plane 0 nonzero, plane 1 negative, bit j of word j // 64 at
    j % 64, padding zero. Each plane's flags select their chunk's place values (Where: no cast of the wide bool
    array), summed per 16-bit chunk in int32."""
    from onnx import TensorProto

    words = (dt + 63) // 64
    chunks = 64 // _CHUNK_BITS
    padding = words * 64 - dt
    if padding:  # zero pads: neither nonzero nor negative, so the padding bits stay zero
        pooled = builder.op("Pad", [pooled, builder.const("pads", np.array([0, 0, 0, 0, 0, padding], np.int64))],
                            "padded")
    grouped = builder.op("Reshape", [pooled, builder.const("chunk_shape", np.array([0, dk, words * chunks,
                                                                                   _CHUNK_BITS], np.int64))], "chunks")
    zero = builder.const("zero", np.zeros((), np.float32))
    place = builder.const("chunk_weights", (1 << np.arange(_CHUNK_BITS)).astype(np.int32))
    nothing = builder.const("no_bits", np.zeros((), np.int32))
    last_axis = builder.const("last_axis", np.array([-1], np.int64))
    plane_axis = builder.const("plane_axis", np.array([2], np.int64))
    planes = []
    for hint, test, selected in (("nonzero", "Equal", [nothing, place]), ("negative", "Less", [place, nothing])):
        condition = builder.op(test, [grouped, zero], f"{hint}_flags")  # nonzero: where P == 0 take nothing
        values = builder.op("Where", [condition, *selected], f"{hint}_places")
        summed = builder.op("ReduceSum", [values, last_axis], f"{hint}_chunks", keepdims=0)  # int32 < 2^16: exact
        planes.append(builder.op("Unsqueeze", [summed, plane_axis], f"{hint}_plane"))
    both = builder.op("Concat", planes, "planes", axis=2)  # (n, Dk, 2, words * chunks) int32
    wide = builder.op("Cast", [both], "chunk_u64", to=TensorProto.UINT64)
    per_word = builder.op("Reshape", [wide, builder.const("word_shape", np.array([0, dk, 2, words, chunks], np.int64))],
                          "word_chunks")
    shifts = builder.const("chunk_shifts", (np.arange(chunks) * _CHUNK_BITS).astype(np.uint64))
    shifted = builder.op("BitShift", [per_word, shifts], "shifted", direction="LEFT")
    parts = builder.op("Split", [shifted], "part", outputs=chunks, axis=-1)
    word = parts[0]
    for part in parts[1:]:
        word = builder.op("Add", [word, part], "word")  # disjoint bits: Add is an OR, and exact in uint64
    builder.op("Squeeze", [word, builder.const("squeeze_axis", np.array([-1], np.int64))], "bits", outputs=[BITS])


def _custom_pool(builder: _GraphBuilder, local: str, guidance: str, pca) -> None:
    builder.op("PoolCodes", [local, guidance, builder.const("pca_mean", pca[0].astype(np.float32)),
                             builder.const("pca_projection", pca[1].astype(np.float32))],
               "pool_codes", outputs=[BITS, CHANNEL_MEAN], domain=CUSTOM_DOMAIN)


def _prune(graph) -> None:
    """Drops nodes and initializers no output depends on (the backbone's taps and outputs not used here)."""
    needed = {output.name for output in graph.output}
    kept = []
    for node in reversed(list(graph.node)):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    unused = [init for init in graph.initializer if init.name not in needed]
    for init in unused:
        graph.initializer.remove(init)


def metadata(encoder, ops: str) -> dict:
    """The encoder's identity as string pairs for ``metadata_props``."""
    import crosslayer

    return {
        "format": MODEL_FORMAT, "format_version": str(MODEL_VERSION), "ops": ops,
        "backbone": encoder.backbone, "layers": json.dumps(list(encoder.layers)), "side": str(encoder.side),
        "policy": encoder.policy, "pca_dim": json.dumps(encoder.pca_dim), "weights_id": str(encoder.weights_id),
        "Dk": str(encoder.Dk), "Dt": str(encoder.Dt), "crosslayer_version": crosslayer.__version__,
        # what the codes are stamped with (`Codes.identity`, an index's identity), and what makes it up
        "identity_digest": encoder.identity_digest, "pca_sha256": encoder.identity["pca_sha256"],
        "precision": encoder.precision, "draft": json.dumps(encoder.draft),
    }


def build_encoder_model(encoder_or_path, ops: str = "standard", embedding: bool = False):
    """The `onnx.ModelProto` of `export_encoder_onnx` (not written)."""
    import onnx
    from onnx import TensorProto, helper

    if ops not in OPS:
        raise UsageError(f"ops: expected one of {OPS}, got {ops!r}")
    if not isinstance(embedding, bool):
        raise UsageError(f"embedding: expected a bool, got {type(embedding).__name__}")
    encoder = _encoder(encoder_or_path)
    if encoder.precision == "bf16":  # the graph would compute in fp32 and stamp the bf16 encoder's identity
        raise UsageError("encoder: precision bf16 runs on OpenVINO and has no ONNX graph of its own; export the fp32 "
                         "encoder of the same PCA (CrossLayerEncoder.with_precision('fp32'))")
    # the model the encoder runs: its fp32 export (weights checked against those its PCA was learnt with) or the
    # int8 one calibrated by fit, which exists only in memory
    model = onnx.load_model_from_string(encoder.backbone_model())
    graph = model.graph
    backbone_input = graph.input[0].name
    for node in graph.node:
        node.input[:] = [_NORMALIZED if name == backbone_input else name for name in node.input]
    local, guidance = encoder.layers
    dk, dt = encoder.Dk, encoder.Dt

    before, after = _GraphBuilder("crosslayer_input_"), _GraphBuilder("crosslayer_pool_")
    _normalisation(before, encoder.spec)
    if ops == "standard":
        _packed_signs(after, _pooled(after, local, guidance, encoder.pca_), dk, dt)
        _channel_mean(after, guidance)
    else:
        _custom_pool(after, local, guidance, encoder.pca_)
    nodes = before.nodes + list(graph.node) + after.nodes  # kept in topological order
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(before.initializers + after.initializers)

    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(INPUT, TensorProto.UINT8, ["batch", encoder.side, encoder.side, 3]))
    outputs = [helper.make_tensor_value_info(BITS, TensorProto.UINT64, ["batch", dk, 2, (dt + 63) // 64]),
               helper.make_tensor_value_info(CHANNEL_MEAN, TensorProto.FLOAT, ["batch", dk])]
    if embedding:
        outputs.append(next(output for output in graph.output if output.name == EMBEDDING))
    del graph.output[:]
    graph.output.extend(outputs)
    del graph.value_info[:]
    _prune(graph)
    if ops == "custom":
        model.opset_import.append(helper.make_opsetid(CUSTOM_DOMAIN, CUSTOM_OPSET))
    graph.name = f"crosslayer_{encoder.backbone}"
    helper.set_model_props(model, {**metadata(encoder, ops), GRAPH_CHECKSUM: _graph_sha256(graph)})
    onnx.checker.check_model(model)  # a custom domain's nodes are checked for structure, not against a schema
    return model


def export_encoder_onnx(encoder_or_path, out, ops: str = "standard", embedding: bool = False) -> Path:
    """Writes the encoder (a fitted `CrossLayerEncoder` or its file) as one ONNX model to `out`, atomically.

    ops: "standard" (standard operators only, any runtime) or "custom" (one ``ai.crosslayer`` PoolCodes node; the
    runtime needs `crosslayer.ort_ops_library()` registered). embedding: also output the backbone's global
    embedding. Returns the path written."""
    from crosslayer._atomic import atomic_write

    model = build_encoder_model(encoder_or_path, ops, embedding)
    out = Path(out)
    with atomic_write(out) as handle:
        handle.write(model.SerializeToString())
    return out


def _graph_sha256(graph) -> str:
    import hashlib

    return hashlib.sha256(graph.SerializeToString(deterministic=True)).hexdigest()


def model_metadata(path) -> dict:
    """The ``metadata_props`` of an exported encoder model, after checking its format, version and the graph's
    checksum (FormatError otherwise)."""
    import onnx
    from google.protobuf.message import DecodeError

    from crosslayer.errors import FormatError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError) as error:
        raise FormatError(f"{path}: not an ONNX model ({error})") from None
    props = {prop.key: prop.value for prop in model.metadata_props}
    if props.get("format") != MODEL_FORMAT:
        raise FormatError(f"{path}: not an exported crosslayer encoder model")
    if props.get("format_version") != str(MODEL_VERSION):
        raise FormatError(f"{path}: encoder model version {props.get('format_version')}, this crosslayer reads "
                          f"{MODEL_VERSION}")
    if props.get(GRAPH_CHECKSUM) != _graph_sha256(model.graph):
        raise FormatError(f"{path}: checksum mismatch (the model is damaged or was edited)")
    return props

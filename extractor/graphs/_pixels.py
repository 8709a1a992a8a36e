"""What a feature graph puts in front of the model: its input conventions, from the pixels.

The feature graph takes ``pixels``: uint8 RGB NHWC as decoded. A float model input gets the
channel order (a ``Gather`` of the uint8 pixels for BGR), the layout (a transpose for NCHW) and
range and normalisation as one Mul and one Add; a uint8 model input gets the pixels in its
channel order and layout, nothing else.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from featurebank.errors import FeaturebankError
from featurebank.spec import Preprocessing

PIXELS = "pixels"


def _const(inits: list, name: str, value) -> str:
    inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
    return name


def prepend_normalisation(nodes: list, inits: list, input_name: str, pre: Preprocessing,
                          input_type: int = TensorProto.FLOAT) -> None:
    """Nodes that turn the uint8 RGB NHWC ``pixels`` into the model's input ``input_name``:
    channel order, layout and, for a float input, range and normalisation; a uint8 input
    takes the pixels as they are."""
    if input_type == TensorProto.UINT8:  # the graph takes the pixels as decoded
        _prepend_raw_pixels(nodes, inits, input_name, pre)
        return
    # (x * range / 255 - mean) / std == x * scale + bias: one Mul and one Add, in the graph's
    # own layout and channel order (mean and std are given in that order and range).
    std = np.array(pre.std, np.float32)
    mean = np.array(pre.mean, np.float32)
    shape = (1, 3, 1, 1) if pre.layout == "nchw" else (1, 1, 1, 3)
    scale = _const(inits, "fb.scale", (pre.pixel_range / (255.0 * std)).reshape(shape))
    bias = _const(inits, "fb.bias", (-mean / std).reshape(shape))
    source = _channel_order(nodes, inits, pre)
    nodes.append(helper.make_node("Cast", [source], ["fb.pixels_f"], to=TensorProto.FLOAT))
    laid = "fb.pixels_f"
    if pre.layout == "nchw":
        nodes.append(helper.make_node("Transpose", ["fb.pixels_f"], ["fb.nchw"], perm=[0, 3, 1, 2]))
        laid = "fb.nchw"
    normalised = input_name if input_type == TensorProto.FLOAT else "fb.normalised"
    nodes += [
        helper.make_node("Mul", [laid, scale], ["fb.scaled"]),
        helper.make_node("Add", ["fb.scaled", bias], [normalised]),
    ]
    if normalised != input_name:  # a float16 (or double) graph input
        nodes.append(helper.make_node("Cast", [normalised], [input_name], to=input_type))


def _channel_order(nodes: list, inits: list, pre: Preprocessing) -> str:
    """The pixels in the model's channel order (a Gather of the uint8 pixels for BGR: a third
    of the bytes of floats)."""
    if pre.channel_order != "bgr":
        return PIXELS
    order = numpy_helper.from_array(np.array([2, 1, 0], np.int64), "fb.bgr_order")
    inits.append(order)
    nodes.append(helper.make_node("Gather", [PIXELS, order.name], ["fb.bgr"], axis=3))
    return "fb.bgr"


def _prepend_raw_pixels(nodes: list, inits: list, input_name: str, pre: Preprocessing) -> None:
    """A uint8 graph input: the decoded pixels in its channel order and layout, nothing else."""
    if pre.pixel_range != 255 or any(m != 0 for m in pre.mean) or any(s != 1 for s in pre.std):
        raise FeaturebankError(
            f"the model takes uint8 pixels (0-255, normalised inside its graph), but its "
            f"preprocessing states pixel range {pre.pixel_range}, mean {list(pre.mean)} and std "
            f"{list(pre.std)}; state pixel_range 255 and no mean or std")
    source = _channel_order(nodes, inits, pre)
    if pre.layout == "nchw":
        nodes.append(helper.make_node("Transpose", [source], [input_name], perm=[0, 3, 1, 2]))
    else:
        nodes.append(helper.make_node("Identity", [source], [input_name]))

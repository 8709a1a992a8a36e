"""``LayerInfo``: one cut point of a model's catalogue (shared by the catalogue builders and the
metadata reader, so neither imports the other)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LayerInfo:
    """A cut point: friendly name, ONNX tensor, shape without batch, FLOPs share up to it.

    ``layout`` is ``NCHW`` or ``NHWC`` for a 4-D activation (``shape`` is then in that order
    after the batch), ``NC`` for a 2-D vector, another axis string for an odd layout (refused
    when cut) and None where the graph does not show it (refused until stated). Exports made
    by featurebank leave it None: their activations are NCHW.

    ``dtype`` is None for float32 (every featurebank export), else the ONNX element type's
    name (``float16``, ``double``, ``bfloat16``): the feature graph casts such a cut to float32
    before pooling.

    ``measured`` is True where static shape inference could not give the shape (a shape
    computed from data it cannot follow) and it was taken from one run of the graph on a
    probe image.
    """

    name: str
    tensor: str
    shape: tuple[int, ...]
    flops_share: float | None = None
    layout: str | None = None
    dtype: str | None = None
    measured: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = {"name": self.name, "tensor": self.tensor, "shape": list(self.shape),
                "flops_share": self.flops_share}
        if self.layout is not None:  # featurebank's own exports stay byte-identical
            data["layout"] = self.layout
        if self.dtype is not None:
            data["dtype"] = self.dtype
        if self.measured:  # absent where static shape inference gave the shape
            data["measured"] = True
        return data

"""The options of ``featurebank deploy`` (standard library only: the command line builds its
flags from them before any stage loads)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from featurebank.errors import OptionError
from featurebank.options import Interval, Options, check_options, option

#: Triton ``dynamic_batching.preferred_batch_size``: the batch sizes at which the fused file's
#: images/s levelled off in ``benchmarks/deploy.py`` (benchmarks/results/deploy.json,
#: ``preferred_batch_sizes``); a test keeps the two equal.
PREFERRED_BATCH_SIZES = (8, 16)
#: Triton's instance kinds, as ``instance_group.kind`` spells them after ``KIND_``
INSTANCE_KINDS = ("auto", "cpu", "gpu")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class DeployOptions:
    """Where a deployed classifier goes and how Triton serves it.

    Parameters
    ----------
    output : str, optional
        The fused ONNX file (pixels in, probabilities out); ``FILE.README.md`` is written
        beside it. Default: the classifier's name with ``.onnx`` (``.deploy.onnx`` for a tuned
        ``.onnx``), unless only a Triton repository is asked for.
    triton : str, optional
        A Triton model repository folder: ``REPO/NAME/1/model.onnx`` and
        ``REPO/NAME/config.pbtxt`` are written there (an existing version is never replaced).
    name : str, optional
        The model's name in the Triton repository (default: the classifier file's stem).
    model : str, optional
        Where the classifier's ONNX model is (an adopted backbone; found by its SHA-256 in the
        cache otherwise), as in ``predict``.
    max_batch_size : int
        Triton ``max_batch_size``: the largest batch the server forms.
    instances : int
        Triton ``instance_group.count``: copies of the model serving at once.
    instance_kind : {'auto', 'cpu', 'gpu'}
        Triton ``instance_group.kind``: ``auto`` puts the instances on the GPUs when there are
        some, else on the CPU.
    queue_delay_us : int
        Triton ``dynamic_batching.max_queue_delay_microseconds``: how long a request may wait
        for others to fill a preferred batch.
    """

    output: str | None = option(None, str, None, help="the fused ONNX file")
    triton: str | None = option(None, str, None, help="write a Triton model repository here "
                                "(REPO/NAME/1/model.onnx + config.pbtxt)")
    name: str | None = option(None, str, None, help="the model's name in the Triton repository "
                              "(default: the classifier file's stem)")
    model: str | None = option(None, str, None, help="where the classifier's ONNX model is "
                               "(found by its SHA-256 in the cache otherwise)")
    max_batch_size: int = option(64, Interval(int, 1, None), help="Triton max_batch_size")
    instances: int = option(1, Interval(int, 1, None), help="Triton instance_group count")
    instance_kind: str = option("auto", Options(INSTANCE_KINDS),
                                help="Triton instance_group kind")
    queue_delay_us: int = option(100, Interval(int, 0, None),
                                 help="Triton dynamic_batching max_queue_delay_microseconds")

    def __post_init__(self) -> None:
        check_options(self)
        if self.name is not None and not _NAME.fullmatch(self.name):
            raise OptionError("name", f"must be letters, digits, '_', '.' or '-' (a folder "
                              f"name in the repository), got {self.name!r}", owner="DeployOptions")
        if self.name is not None and self.triton is None:
            raise OptionError("name", "names the model in a Triton repository; give triton too",
                              related=("triton",), owner="DeployOptions")
        if self.output is not None and not self.output.lower().endswith(".onnx"):
            raise OptionError("output", f"is an ONNX file; end the name in .onnx, got "
                              f"{self.output!r}", owner="DeployOptions")

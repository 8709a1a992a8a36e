"""How a collection is embedded: :class:`EmbedRun`, light (standard library only), so that the
command line builds its flags from it without loading onnxruntime, numpy or the store."""

from __future__ import annotations

import os
from dataclasses import KW_ONLY, dataclass

from featurebank.options import Interval, Options, check_options, option
from featurebank.spec import DTYPES

#: Where embedding runs: this machine's threads, or a Ray cluster.
ENGINES = ("local", "ray")
#: onnxruntime devices; ``auto`` prefers CUDA when onnxruntime has it.
DEVICES = ("auto", "cpu", "cuda")

_POSITIVE_INT = (None, Interval(int, 1, None))


@dataclass(frozen=True)
class EmbedRun:
    """How a collection is embedded (not what: that is :class:`featurebank.FeatureOptions`).

    Parameters
    ----------
    batch_size : int
        Images per inference call and per commit.
    workers : int, optional
        Decoding threads (local) or embedding actors (Ray); default: by the machine.
    device : {'auto', 'cpu', 'cuda'}
        Where onnxruntime runs; ``auto`` prefers CUDA when onnxruntime has it.
    threads : int, optional
        onnxruntime intra-op threads.
    dtype : {'float16', 'float32'}
        Storage type of new feature sets.
    progress : bool
        Show progress (a bar on a terminal, a line every so many images otherwise).
    engine : {'local', 'ray'}
        Embed with this machine's threads, or on a Ray cluster.
    address : str, optional
        Ray cluster address (``engine='ray'``).
    file_timeout : float
        Seconds one file may take to read and decode; a file over it is recorded as a failure.
    calibration_size : int
        Images to calibrate ``precision='int8'`` on.
    shard_rows : int, optional
        Rows per shard file of the Ray engine; default ``16 * batch_size``.
    actor_wait_s : float
        Ray engine: how long to wait for the first actor before failing (a cluster without
        room for it).
    """

    batch_size: int = option(32, Interval(int, 1, None))
    _: KW_ONLY  # everything after the batch size is named
    workers: int | None = option(None, *_POSITIVE_INT)
    device: str = option("auto", Options(DEVICES))
    threads: int | None = option(None, *_POSITIVE_INT)
    dtype: str = option("float16", Options(DTYPES))
    progress: bool = option(True, bool)
    engine: str = option("local", Options(ENGINES))
    address: str | None = option(None, None, str, help="Ray cluster address (engine 'ray')")
    file_timeout: float = option(60.0, Interval(float, 0, None, "neither"))
    calibration_size: int = option(128, Interval(int, 1, None))
    shard_rows: int | None = option(None, *_POSITIVE_INT)
    actor_wait_s: float = option(600.0, Interval(float, 0, None, "neither"))

    def __post_init__(self) -> None:
        check_options(self)

    @property
    def decode_threads(self) -> int:
        return self.workers or os.cpu_count() or 2

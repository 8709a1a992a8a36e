"""``embed_collection``: validate once, then hand the run to the local or the Ray engine."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from featurebank.errors import FeaturebankError
from featurebank.extractor._extractor import Extractor
from featurebank.extractor._inputs import collect, input_roots, split_layout_warning
from featurebank.extractor.engines._common import EmbedRun, EmbedSummary
from featurebank.extractor.sources import SourceOptions
from featurebank.options import check_names
from featurebank.spec import FEATURE_OPTION_NAMES, FeatureOptions, feature_options

log = logging.getLogger(__name__)
_RUN_NAMES = tuple(f.name for f in fields(EmbedRun))
_SOURCE_NAMES = tuple(f.name for f in fields(SourceOptions))


def embed_collection(inputs: Sequence[str | Path], store_path: str | Path,
                     features: FeatureOptions | str | None = None, *,
                     run: EmbedRun | None = None, extractor: Extractor | None = None,
                     sources: SourceOptions | None = None, **options: Any) -> EmbedSummary:
    """Embed every image of ``inputs`` into ``store_path``; only new content is computed.

    Parameters
    ----------
    inputs : sequence of str or path
        Folders (sub-folder = label), list files (CSV, JSON lines, parquet), webdataset tar
        shards, parquet files with image bytes, globs, image files, and any of these as fsspec
        URLs (``s3://``, ``gs://``, ``az://``, ``https://``); see
        :func:`featurebank.extractor.collect`.
    store_path : path
        The HDF5 store; created when absent.
    features : FeatureOptions or str, optional
        What the vectors are made of (a model name is read as ``FeatureOptions(model=...)``).
    run : EmbedRun, optional
        How the run goes (batch size, workers, device, dtype, engine, ...).
    extractor : Extractor, optional
        A ready extractor; it replaces ``features`` and ``run.device`` / ``run.threads``.
    sources : SourceOptions, optional
        Rows and columns of list and parquet inputs (``split``, ``image_column``,
        ``label_column``).
    **options
        Fields of :class:`featurebank.FeatureOptions`, :class:`EmbedRun` or
        :class:`SourceOptions`, applied over ``features``, ``run`` and ``sources``:
        ``embed_collection(["photos"], "s.h5", layers=["head"], batch_size=64)``.

    Returns
    -------
    EmbedSummary
        Counts of embedded, cached, duplicate and failed images, the wall time, the images per
        label of the input and any warning about the layout (labels that look like splits).

    Raises
    ------
    FeaturebankError
        An unknown model or layer, a missing input, or inputs holding no image at all; all
        checked before the store is created or opened. A store this call created is removed
        again when the run fails before its first row.

    Notes
    -----
    ``precision='int8'`` calibrates on ``run.calibration_size`` images spread evenly over the
    collection; a store that already holds int8 vectors of the same spec keeps its
    calibration, so later runs append to the same feature set.
    """
    feature_kw = {k: v for k, v in options.items() if k in FEATURE_OPTION_NAMES}
    run_kw = {k: v for k, v in options.items() if k in _RUN_NAMES}
    source_kw = {k: v for k, v in options.items() if k in _SOURCE_NAMES}
    check_names("embed_collection", options, FEATURE_OPTION_NAMES, _RUN_NAMES, _SOURCE_NAMES)
    run = replace(run or EmbedRun(), **run_kw)
    sources = replace(sources or SourceOptions(), **source_kw)
    # Everything that can be wrong in the request is checked before the store is touched:
    # first the inputs (cheap: an input without images fails at once), then the model and
    # layers (the graph is cut now; a registry model may be exported first, which takes time).
    items = collect(list(inputs), sources=sources)
    if extractor is None:
        extractor = Extractor(feature_options(features, **feature_kw), device=run.device,
                              batch_size=run.batch_size, threads=run.threads)
    if run.engine == "ray" and extractor.precision != "fp32":
        raise FeaturebankError(f"precision {extractor.precision!r} runs with engine 'local' "
                               "only; Ray actors compute in fp32")
    uncalibrated = extractor.precision == "int8" and extractor.options.calibration is None
    # Resolving the specs cuts the graph: a wrong layer fails here, before the store exists.
    float_specs = (Extractor(extractor.options.replace(precision="fp32")).specs if uncalibrated
                   else extractor.specs)
    labels = dict(Counter(i.label for i in items))
    warnings = [w for w in [split_layout_warning(inputs, items)] if w]
    for w in warnings:
        log.warning("%s", w)
    roots = input_roots(inputs)
    existed = Path(store_path).exists()
    try:
        summary = _embed(items, store_path, extractor, run, roots, float_specs, uncalibrated)
    except BaseException:
        if not existed:
            _remove_if_empty(Path(store_path))
        raise
    summary.labels, summary.warnings = labels, warnings
    return summary


def _embed(items, store_path, extractor, run, roots, float_specs, uncalibrated) -> EmbedSummary:
    if run.engine == "ray":
        try:
            from featurebank.extractor.engines._ray import embed_ray
        except ImportError as exc:
            raise FeaturebankError("engine 'ray' needs Ray: pip install 'featurebank[ray]'") \
                from exc
        return embed_ray(items, store_path, extractor, run, roots)
    from featurebank.extractor.engines._local import embed_local, int8_calibration
    from featurebank.extractor.store import FeatureStore

    with FeatureStore(store_path, mode="a") as store:
        store.commit(roots=roots)
        if uncalibrated:
            calibration = int8_calibration(items, store, float_specs, run.calibration_size)
            extractor = Extractor(extractor.options.replace(calibration=calibration),
                                  device=run.device, batch_size=run.batch_size,
                                  threads=run.threads)
        return embed_local(items, store, extractor, run)


def _remove_if_empty(path: Path) -> None:
    """A store this run created but never committed a row to goes: a failed start leaves no
    empty file (its lock file went when the store closed)."""
    from featurebank.extractor.store import FeatureStore

    try:
        info = FeatureStore(path).info()
    except FeaturebankError:
        return
    if not info["images"] and not info["failures"]:
        path.unlink(missing_ok=True)

"""What a neighbour search does: :class:`SearchOptions`, light (standard library only), so that
the command line builds its flags from it without loading numpy, h5py or faiss."""

from __future__ import annotations

from dataclasses import dataclass

from featurebank.options import Interval, Options, check_options, option

#: how the neighbours are found: ``exact`` streams the store; ``hnsw`` and ``ivfpq`` are faiss
#: indexes persisted beside it; ``auto`` is exact up to ``index_above`` rows, then an index
INDEX_KINDS = ("auto", "exact", "hnsw", "ivfpq")
#: rows per block of the exact search: its memory is about block_rows * (dim + queries) * 4 bytes
DEFAULT_BLOCK_ROWS = 8192
#: above this many rows ``auto`` uses an index (an exact query then reads the whole set)
DEFAULT_INDEX_ABOVE = 200_000
#: HNSW keeps every vector (float32) in memory: beyond this ``auto`` builds IVF-PQ instead
HNSW_MAX_BYTES = 2 << 30


@dataclass(frozen=True)
class SearchOptions:
    """How the nearest stored rows are found (cosine similarity of the stored vectors).

    Parameters
    ----------
    top : int
        Neighbours returned per query.
    block_rows : int
        Stored rows read and compared at a time by the exact search: memory stays near
        ``block_rows * (dim + queries) * 4`` bytes, whatever the store's size.
    index : {'auto', 'exact', 'hnsw', 'ivfpq'}
        How neighbours are found. ``exact`` streams every row; ``hnsw``/``ivfpq`` use (and build or extend) a faiss index
        kept beside the store (needs ``featurebank[faiss]``); ``auto`` is exact up to
        ``index_above`` rows and an index beyond.
    index_above : int
        Rows above which ``index='auto'`` uses an index.
    """

    top: int = option(10, Interval(int, 1, 10_000))
    block_rows: int = option(DEFAULT_BLOCK_ROWS, Interval(int, 1, None))
    index: str = option("auto", Options(INDEX_KINDS))
    index_above: int = option(DEFAULT_INDEX_ABOVE, Interval(int, 0, None))

    def __post_init__(self) -> None:
        check_options(self)

    def method(self, rows: int, dim: int) -> str:
        """The method used for a feature set of ``rows`` rows of ``dim`` values: beyond
        ``index_above`` rows, HNSW while its float32 copy of the vectors stays under
        ``HNSW_MAX_BYTES``, IVF-PQ (compressed codes) beyond."""
        if self.index != "auto":
            return self.index
        if rows <= self.index_above:
            return "exact"
        return "hnsw" if rows * dim * 4 <= HNSW_MAX_BYTES else "ivfpq"

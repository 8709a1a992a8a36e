"""What to read from list files and parquet inputs (``featurebank embed --split/--image-column/
--label-column``)."""

from __future__ import annotations

from dataclasses import dataclass

from featurebank.options import Text, check_options, option


@dataclass(frozen=True)
class SourceOptions:
    """Which rows and columns of tabular inputs are read.

    Parameters
    ----------
    split : str, optional
        Keep only rows whose ``split`` column equals this (list files, parquet files). An input
        that has no ``split`` column is refused when it is set.
    image_column : str, optional
        The column of a parquet file holding image bytes (binary, or a ``{bytes, path}``
        struct); default: ``image``, else the file's only binary column.
    label_column : str
        The label column of list files and parquet files (absent: no label).
    """

    split: str | None = option(None, None, Text(), help="keep only rows of list and parquet "
                               "inputs whose 'split' column is this")
    image_column: str | None = option(None, None, Text(), help="parquet column holding image bytes "
                                      "(default: 'image', else the only binary column)")
    label_column: str = option("label", Text(), help="label column of list and parquet inputs "
                               "(default: %(default)s)")

    def __post_init__(self) -> None:
        check_options(self)


DEFAULT_SOURCES = SourceOptions()

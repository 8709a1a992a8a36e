"""What to read from list files and parquet inputs (``featurebank embed --split/--image-column/
--label-column``)."""

from __future__ import annotations

from dataclasses import dataclass

from featurebank.errors import FeaturebankError


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

    split: str | None = None
    image_column: str | None = None
    label_column: str = "label"

    def __post_init__(self) -> None:
        for name in ("split", "image_column", "label_column"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise FeaturebankError(f"--{name.replace('_', '-')} must be a non-empty name, "
                                       f"got {value!r}")


DEFAULT_SOURCES = SourceOptions()

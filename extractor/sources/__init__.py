"""featurebank.extractor.sources: where images come from, beyond folders.

- path forms (:func:`parse_source`): local files, fsspec URLs, tar shard members
  (``shard.tar#KEY.jpg``) and parquet rows (``file.parquet#row=N``) -- what the store records;
- :func:`open_source`: the bytes behind any stored path (every reader that reopens images);
- :func:`iter_payloads`: many items, each container streamed once;
- :func:`expand_file` / :func:`collect_remote`: list files (CSV, JSON lines, parquet),
  webdataset tar shards and parquet files with image bytes, locally or behind URLs.

URLs, parquet and remote shards need the ``io`` extra (fsspec, s3fs, pyarrow); local files and
local tar shards need nothing more. Nothing heavy is imported until it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurebank.lazy import attach

# public name -> the module that defines it, loaded on first use: the command line builds its
# flags from SourceOptions without loading the readers
_LAZY = {
    "collect_remote": "featurebank.extractor.sources._expand",
    "expand_file": "featurebank.extractor.sources._expand",
    "is_tabular": "featurebank.extractor.sources._expand",
    "CONTAINER_EXTENSIONS": "featurebank.extractor.sources._forms",
    "IMAGE_EXTENSIONS": "featurebank.extractor.sources._forms",
    "DecodeError": "featurebank.extractor.sources._forms",
    "ImageItem": "featurebank.extractor.sources._forms",
    "SourceRef": "featurebank.extractor.sources._forms",
    "container_kind": "featurebank.extractor.sources._forms",
    "is_image_name": "featurebank.extractor.sources._forms",
    "is_remote": "featurebank.extractor.sources._forms",
    "is_url": "featurebank.extractor.sources._forms",
    "local_form": "featurebank.extractor.sources._forms",
    "parent_of": "featurebank.extractor.sources._forms",
    "parse_source": "featurebank.extractor.sources._forms",
    "LIST_EXTENSIONS": "featurebank.extractor.sources._lists",
    "is_list_name": "featurebank.extractor.sources._lists",
    "DEFAULT_SOURCES": "featurebank.extractor.sources._options",
    "SourceOptions": "featurebank.extractor.sources._options",
    "Payload": "featurebank.extractor.sources._read",
    "iter_payloads": "featurebank.extractor.sources._read",
    "open_source": "featurebank.extractor.sources._read",
    "read_all": "featurebank.extractor.sources._read",
    "read_local": "featurebank.extractor.sources._read",
    "remote_info": "featurebank.extractor.sources._remote",
}
_RENAMED = {"remote_info": "info"}

__all__ = ["CONTAINER_EXTENSIONS", "DEFAULT_SOURCES", "DecodeError", "IMAGE_EXTENSIONS",
           "ImageItem", "LIST_EXTENSIONS", "Payload", "SourceOptions", "SourceRef",
           "collect_remote", "container_kind", "expand_file", "is_image_name", "is_list_name",
           "is_remote", "is_tabular", "is_url", "iter_payloads", "local_form", "open_source",
           "parent_of", "parse_source", "read_all", "read_local", "remote_info"]

if TYPE_CHECKING:
    from featurebank.extractor.sources._expand import collect_remote, expand_file, is_tabular
    from featurebank.extractor.sources._forms import (
        CONTAINER_EXTENSIONS,
        IMAGE_EXTENSIONS,
        DecodeError,
        ImageItem,
        SourceRef,
        container_kind,
        is_image_name,
        is_remote,
        is_url,
        local_form,
        parent_of,
        parse_source,
    )
    from featurebank.extractor.sources._lists import LIST_EXTENSIONS, is_list_name
    from featurebank.extractor.sources._options import DEFAULT_SOURCES, SourceOptions
    from featurebank.extractor.sources._read import (
        Payload,
        iter_payloads,
        open_source,
        read_all,
        read_local,
    )
    from featurebank.extractor.sources._remote import info as remote_info


__getattr__, __dir__ = attach(__name__, _LAZY, _RENAMED)

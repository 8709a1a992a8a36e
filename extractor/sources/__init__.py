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

__all__ = ["CONTAINER_EXTENSIONS", "DEFAULT_SOURCES", "IMAGE_EXTENSIONS", "LIST_EXTENSIONS", "DecodeError",
           "ImageItem", "Payload", "SourceOptions", "SourceRef", "collect_remote",
           "container_kind", "expand_file", "is_image_name", "is_list_name", "is_remote",
           "is_tabular", "is_url", "iter_payloads", "local_form", "open_source", "parent_of",
           "parse_source", "read_all", "read_local", "remote_info"]

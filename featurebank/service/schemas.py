"""What every route answers, as pydantic models: the service's contract in ``/openapi.json``.

The routes build their JSON by hand (FastAPI's encoder would walk every float of a vector again),
so these models are documentation and a check: the tests validate real answers against the
served schema, and ``extra="forbid"`` (``additionalProperties: false``) makes an undocumented
field fail them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

NPY = "application/x-npy"
NPZ = "application/x-npz"
BINARY = {"schema": {"type": "string", "format": "binary"}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LayerInfo(_Strict):
    """One served layer: its slice of the concatenated vector and its store identity."""

    layer: str = Field(description="catalogue name of the cut, e.g. 'blocks.10' or 'head'")
    dim: int = Field(description="length of this layer's part of each vector")
    fingerprint: str = Field(description="the feature set's id in a store (same as `embed`)")
    spec: dict[str, Any] = Field(description="the full feature spec the fingerprint is made from")


class ImageInfo(_Strict):
    key: str = Field(description="content key of the image bytes (the store's key)")
    cached: bool = Field(description="answered from the feature store, not computed")


class BatchInfo(_Strict):
    id: int = Field(description="inference call id; requests sharing it were batched together")
    size: int = Field(description="images in that inference call")


class EmbeddingsResponse(_Strict):
    """Vectors as JSON. ``Accept: application/x-npy`` gets the matrix as a ``.npy`` file,
    ``application/x-npz`` one array per layer; both with the X-Featurebank-* headers."""

    embeddings: list[list[float]] = Field(description="one float32 vector per image, layers "
                                                      "concatenated in the order of `layers`")
    dim: int
    layers: list[LayerInfo]
    spec: list[dict[str, Any]]
    images: list[ImageInfo]
    batches: list[BatchInfo]


class Prediction(_Strict):
    label: str
    probability: float = Field(description="probability of `label`")
    probabilities: dict[str, float] = Field(description="probability of every class")


class PredictionsResponse(_Strict):
    predictions: list[Prediction]
    classes: list[str]
    fingerprints: list[str] = Field(description="feature sets the classifier was trained on")
    images: list[ImageInfo]


class Neighbor(_Strict):
    key: str = Field(description="content key (SHA-256) of the stored image")
    path: str = Field(description="its first stored path")
    label: str
    similarity: float = Field(description="cosine similarity at the layer's cut")


class NeighborsResponse(_Strict):
    neighbors: list[list[Neighbor]] = Field(description="per image, most similar first")
    layer: str
    fingerprint: str = Field(description="the feature set searched")
    images: list[ImageInfo]


class ClassifierInfo(_Strict):
    classes: list[str]
    fingerprints: list[str]
    info: dict[str, Any]


class ModelsResponse(_Strict):
    model: dict[str, Any] = Field(description="the model spec (file digest, preprocessing)")
    layers: list[LayerInfo]
    dim: int
    catalogue: list[dict[str, Any]] = Field(description="every layer the model can be cut at")
    classifier: ClassifierInfo | None
    store: str | None
    limits: dict[str, Any] = Field(description="the ServiceConfig in force")
    featurebank_version: str


class Status(_Strict):
    status: str


class ErrorResponse(BaseModel):
    """Every error answer: ``detail`` says what went wrong and what to do."""

    model_config = ConfigDict(extra="forbid")

    detail: str
    image: str | None = Field(None, description="422: the image that cannot be embedded")
    index: int | None = Field(None, description="422: its position in the request")
    reason: str | None = Field(None, description="422: why (truncated, too many pixels, ...)")


#: what FastAPI's ``responses=`` takes: status -> OpenAPI response fields
Responses = dict[int | str, dict[str, Any]]


def _error(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": text, **extra}


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                               "schema": {"type": "integer"}}}
ERRORS: Responses = {
    400: _error("malformed request (multipart without boundary, body cut short)"),
    401: _error("missing or wrong API key"),
    413: _error("body over max_request_bytes or more than max_images_per_request images"),
    415: _error("Content-Type is neither image/* nor multipart/form-data"),
    422: _error("an image cannot be decoded; the answer names it and the reason"),
    503: _error("queue full; retry after the Retry-After seconds", headers=RETRY_AFTER),
    504: _error("not answered within request_timeout_s"),
}
_ARRAY_HEADERS = {
    "X-Featurebank-Fingerprints": {"description": "fingerprints of the layers, comma-separated",
                                   "schema": {"type": "string"}},
    "X-Featurebank-Layers": {"description": "layer:dim pairs in vector order, comma-separated",
                             "schema": {"type": "string"}},
    "X-Featurebank-Cached": {"description": "1/0 per image: answered from the store",
                             "schema": {"type": "string"}},
}
EMBEDDINGS_OK: Responses = {200: {"description": "vectors, as JSON, .npy or .npz (by the Accept header)",
                       "content": {NPY: BINARY, NPZ: BINARY}, "headers": _ARRAY_HEADERS}}
PREDICTIONS_ERRORS: Responses = ERRORS | {409: _error("no classifier loaded")}
NEIGHBORS_ERRORS: Responses = ERRORS | {409: _error("no store loaded, or it lacks the layer's feature set")}
AUTH_ERROR: Responses = {401: ERRORS[401]}
# /metrics answers text, but its 401 comes from the guard as JSON: said explicitly, since a
# "model" entry would take the route's text/plain media type
METRICS_AUTH_ERROR: Responses = {401: {"description": ERRORS[401]["description"], "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}}
HEALTH_ERRORS: Responses = {503: {"model": Status, "description": "the inference thread died"}}
READY_ERRORS: Responses = {503: {"model": Status, "description": "still loading",
                      "headers": RETRY_AFTER}}

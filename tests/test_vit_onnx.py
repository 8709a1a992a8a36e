"""Vision transformers adopted from plain ONNX files get ``blocks.K``, ``head``, ``pool`` and
``logits`` from their graph, and their prefix tokens where the graph shows them (naming rule 4).

The files are made here with torch's TorchScript exporter from timm's and torchvision's own
modules (random weights), at a fixed batch of 1 and with a dynamic batch, as users bring them.
Vectors cut at each block (class token and patch-token mean) are compared with a forward hook
on the library's block: max|a - b| / max(1, max|b|) <= 1e-4 per image, on real photos.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from featurebank import FeaturebankError
from featurebank.export import adopt, read_onnx_metadata
from featurebank.extractor import Extractor
from featurebank.spec import FeatureOptions

torch = pytest.importorskip("torch")
TOL = 1e-4
SIZE = 64  # small inputs: 4x4 patches of 16


def _export(model, path, batch: int | None, opset: int) -> None:
    """``torch.onnx.export`` (TorchScript): fixed ``batch``, or a dynamic one when None."""
    dynamic = {"input": {0: "N"}, "output": {0: "N"}} if batch is None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(batch or 2, 3, SIZE, SIZE),), str(path),
                          dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=["output"], dynamic_axes=dynamic)


def _adopt(src, tmp_path, **stated):
    out = tmp_path / f"{src.stem}.adopted.onnx"
    adopt(src, out, input_size=SIZE, pixel_range=1, channel_order="rgb", mean=(0.5,) * 3,
          std=(0.5,) * 3, **stated)
    return out


def _photos(n: int = 3) -> np.ndarray:
    from PIL import Image
    from skimage import data

    return np.stack([np.asarray(Image.fromarray(getattr(data, k)()).resize((SIZE, SIZE)))
                     for k in ("chelsea", "coffee", "astronaut")[:n]])


def _block_outputs(model, blocks, pixels: np.ndarray) -> list[np.ndarray]:
    """What each module in ``blocks`` outputs for ``pixels`` (normalised as adopted)."""
    x = torch.from_numpy((pixels.astype(np.float32) / 255 - 0.5) / 0.5).permute(0, 3, 1, 2)
    seen = []
    hooks = [b.register_forward_hook(lambda _m, _i, o: seen.append(o.numpy())) for b in blocks]
    try:
        with torch.no_grad():
            model(x.contiguous())
    finally:
        for h in hooks:
            h.remove()
    return seen


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return max(float(np.abs(x - y).max() / max(1.0, float(np.abs(y).max())))
               for x, y in zip(a, b, strict=True))


def _timm(arch: str):
    timm = pytest.importorskip("timm", reason="timm does not import here (make zoo)")
    model = timm.create_model(arch, pretrained=False, img_size=SIZE).eval()
    return model, list(model.blocks), model.num_prefix_tokens


def _torchvision():
    models = pytest.importorskip("torchvision.models", reason="torchvision does not import here")
    torch.manual_seed(0)
    model = models.VisionTransformer(image_size=SIZE, patch_size=16, num_layers=3, num_heads=2,
                                     hidden_dim=32, mlp_dim=64).eval()
    return model, list(model.encoder.layers), 1


@pytest.mark.timm
@pytest.mark.torchvision
@pytest.mark.parametrize("source", ["timm", "torchvision"])
@pytest.mark.parametrize("batch", [1, None], ids=["batch1", "dynamic"])
def test_an_onnx_vit_is_cut_at_each_block_like_the_library(tmp_path, source, batch):
    """Every block is named from the graph alone; its class token and patch-token mean equal
    the library's block output; a dynamic batch runs any batch, a fixed one too where the
    rewrite of its batch constants holds, else in chunks."""
    model, blocks, prefix = _timm("test_vit") if source == "timm" else _torchvision()
    src = tmp_path / f"{source}.onnx"
    _export(model, src, batch, 14 if batch else 17)  # 17: LayerNormalization as one op
    adopted = _adopt(src, tmp_path)
    info = read_onnx_metadata(adopted)
    assert info.spec.preprocessing.prefix_tokens == prefix  # T - patches, from the graph
    assert info.spec.preprocessing.class_token is True  # the classifier reads token 0
    assert info.spec.naming == 4
    if batch is None or source == "timm":  # runs any batch; timm's fixed-batch file once its
        assert info.extra.get("batch") is None  # class token's Expand takes the input's batch
        assert batch is None or any(c.startswith("Expand") for c in info.extra["batch_rewrite"])
    else:  # nn.MultiheadAttention bakes batch x heads into its Reshapes: chunks of one image
        assert info.extra["batch"] == 1 and "self_attention/Reshape" in info.extra["batch_reason"]
    names = {la.name: la for la in info.layers}
    wanted = [f"blocks.{k}" for k in range(len(blocks))]
    assert all(names[n].layout == "tokens" for n in [*wanted, "head"])
    assert names["pool"].shape == names["head"].shape[1:] and "logits" in names
    assert not any(n.startswith("stage.") for n in names)  # the patch grid is no stage

    pixels = _photos()
    vectors = Extractor(FeatureOptions(model=str(adopted), layers=(*wanted, "head", "pool"),
                                       pool="cls+mean")).embed_pixels(pixels)
    reference = _block_outputs(model, blocks, pixels)
    channels = reference[0].shape[-1]
    for got, ref in zip(vectors, reference, strict=False):  # the blocks
        assert _relative(got[:, :channels], ref[:, 0]) <= TOL
        assert _relative(got[:, channels:], ref[:, prefix:].mean(1)) <= TOL
    norm = model.norm if source == "timm" else model.encoder.ln
    head = _block_outputs(model, [norm], pixels)[0]
    assert _relative(vectors[len(blocks)][:, :channels], head[:, 0]) <= TOL
    assert _relative(vectors[-1], head[:, 0]) <= TOL  # pool: what the classifier reads


@pytest.mark.timm
def test_register_tokens_are_counted_and_an_unshown_class_token_refuses_cls(tmp_path):
    """timm's test_vit2 has one register token and no class token, and pools the patch mean:
    the graph shows one prefix token but not what it is, so ``cls`` is refused until stated,
    and a statement the graph contradicts is refused at adoption."""
    model, blocks, prefix = _timm("test_vit2")
    src = tmp_path / "reg.onnx"
    _export(model, src, 1, 14)
    adopted = _adopt(src, tmp_path)
    pre = read_onnx_metadata(adopted).spec.preprocessing
    assert (pre.prefix_tokens, pre.class_token) == (prefix, None) == (1, None)
    pixels = _photos(2)
    with pytest.raises(FeaturebankError, match="adopt SOURCE.onnx ... --class-token"):
        Extractor(FeatureOptions(model=str(adopted), layers=("blocks.1",),
                                 pool="cls")).embed_pixels(pixels)
    got = Extractor(FeatureOptions(model=str(adopted), layers=("blocks.1",),
                                   pool="mean")).embed_pixels(pixels)[0]
    assert _relative(got, _block_outputs(model, [blocks[1]], pixels)[0][:, 1:].mean(1)) <= TOL
    stated = _adopt(src, tmp_path, class_token=False)
    assert read_onnx_metadata(stated).spec.preprocessing.class_token is False
    with pytest.raises(FeaturebankError, match="shows 1 token.*prefix_tokens = 2"):
        _adopt(src, tmp_path, prefix_tokens=2)


class _LinearPatchViT(torch.nn.Module):
    """A ViT whose patches are embedded by a Linear on unfolded pixels (no convolution): the
    graph does not show how many of its tokens are patches."""

    def __init__(self, dim: int = 16, patch: int = 16):
        super().__init__()
        self.patch = patch
        self.embed = torch.nn.Linear(3 * patch * patch, dim)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, dim))
        self.pos = torch.nn.Parameter(torch.randn(1, 1 + (SIZE // patch) ** 2, dim))
        self.norms = torch.nn.ModuleList(torch.nn.LayerNorm(dim) for _ in range(4))
        self.attn = torch.nn.ModuleList(torch.nn.MultiheadAttention(dim, 2, batch_first=True)
                                        for _ in range(2))
        self.mlp = torch.nn.ModuleList(torch.nn.Linear(dim, dim) for _ in range(2))
        self.head = torch.nn.Linear(dim, 5)

    def forward(self, x):
        n, p, side = x.shape[0], self.patch, SIZE // self.patch
        patches = x.reshape(n, 3, side, p, side, p).permute(0, 2, 4, 1, 3, 5) \
            .reshape(n, side * side, 3 * p * p)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.embed(patches)], 1)
        tokens = tokens + self.pos
        for k in range(2):
            y = self.norms[2 * k](tokens)
            tokens = tokens + self.attn[k](y, y, y, need_weights=False)[0]
            tokens = tokens + torch.relu(self.mlp[k](self.norms[2 * k + 1](tokens)))
        return self.head(tokens[:, 0])


def test_a_vit_whose_prefix_tokens_the_graph_does_not_show_is_refused_until_stated(tmp_path):
    """Its blocks are named, but cutting them is refused with what to state; once
    ``prefix_tokens`` is stated, the cut works."""
    torch.manual_seed(0)
    src = tmp_path / "linear_patches.onnx"
    _export(_LinearPatchViT().eval(), src, None, 17)
    adopted = _adopt(src, tmp_path)
    info = read_onnx_metadata(adopted)
    assert info.spec.preprocessing.prefix_tokens is None
    assert {"blocks.0", "blocks.1", "head", "pool", "logits"} <= {la.name for la in info.layers}
    with pytest.raises(FeaturebankError, match="prefix_tokens = N"):
        Extractor(FeatureOptions(model=str(adopted), layers=("blocks.1",),
                                 pool="mean")).embed_pixels(_photos(1))
    stated = _adopt(src, tmp_path, prefix_tokens=1)
    vectors = Extractor(FeatureOptions(model=str(stated), layers=("blocks.1",),
                                       pool="cls")).embed_pixels(_photos(2))[0]
    assert vectors.shape == (2, 16) and np.isfinite(vectors).all()


def test_prefix_tokens_and_class_token_are_stated_on_the_command_line(tmp_path, capsys):
    """adopt's --prefix-tokens and --class-token/--no-class-token: what the refusals name,
    without a preprocessing file."""
    from featurebank.cli import main as cli

    torch.manual_seed(0)
    src = tmp_path / "linear_patches.onnx"
    _export(_LinearPatchViT().eval(), src, None, 17)
    common = ["adopt", str(src), "--input-size", str(SIZE), "--pixel-range", "1",
              "--channel-order", "rgb", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"]
    unstated = tmp_path / "unstated.onnx"
    assert cli([*common, "-o", str(unstated)]) == 0
    with pytest.raises(FeaturebankError, match="--prefix-tokens N"):
        Extractor(FeatureOptions(model=str(unstated), layers=("blocks.1",),
                                 pool="mean")).embed_pixels(_photos(1))
    stated = tmp_path / "stated.onnx"
    assert cli([*common, "-o", str(stated), "--prefix-tokens", "1", "--class-token"]) == 0
    pre = read_onnx_metadata(stated).spec.preprocessing
    assert (pre.prefix_tokens, pre.class_token) == (1, True)
    got = Extractor(FeatureOptions(model=str(stated), layers=("blocks.1",),
                                   pool="cls")).embed_pixels(_photos(2))[0]
    assert got.shape == (2, 16) and np.isfinite(got).all()
    capsys.readouterr()
    # the graph's classifier reads token 0: a statement that contradicts it is refused
    assert cli([*common, "-o", str(tmp_path / "x.onnx"), "--prefix-tokens", "1",
                "--no-class-token"]) == 1
    assert "class_token = False was stated" in capsys.readouterr().err

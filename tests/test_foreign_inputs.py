"""Foreign graphs whose input or shapes stopped featurebank before: uint8 pixel inputs of any
size, and shapes that only a run shows (issue 34, items 5 and 6)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from featurebank import FeaturebankError
from featurebank.export import adopt, read_onnx_metadata
from featurebank.extractor import Extractor
from tests._onnx_graphs import data_dependent, outputs_of, uint8_nhwc


def pooled(value: np.ndarray) -> np.ndarray:
    return value.mean(axis=(2, 3)) if value.ndim == 4 else value


@pytest.mark.parametrize("order", ["rgb", "bgr"])
def test_uint8_input_of_any_size_is_adopted_and_fed_raw_pixels(tmp_path, order):
    src = uint8_nhwc(tmp_path / "u8.onnx")
    out = tmp_path / "u8.adopted.onnx"
    with pytest.raises(FeaturebankError, match=r"input_size=N or input_size=\(H, W\)"):
        adopt(src, out, channel_order=order)  # height and width are dynamic
    spec = adopt(src, out, channel_order=order, input_size=40)  # no pixel_range needed
    pre = spec.preprocessing
    assert (pre.pixel_range, pre.mean, pre.std, pre.layout) == (255, (0.0,) * 3, (1.0,) * 3, "nhwc")
    info = read_onnx_metadata(out)
    assert info.extra["dtype"] == "uint8" and info.extra["normalized"] is False
    names = {la.name: la for la in info.layers}
    assert [names[f"stage.{k}"].tensor for k in (1, 2, 3)] == ["s1.relu", "s2.relu", "s3.relu"]
    assert names["stage.3"].shape == (32, 5, 5) and names["pool"].tensor == "flat"
    cuts = ["stage.1", "stage.2", "head", "pool", "logits"]
    pixels = np.random.default_rng(0).integers(0, 256, (3, 40, 40, 3), np.uint8)
    got = Extractor(str(out), layers=cuts, device="cpu").embed_pixels(pixels)
    fed = pixels[..., ::-1] if order == "bgr" else pixels
    refs = outputs_of(src, [names[c].tensor for c in cuts], np.ascontiguousarray(fed))
    for cut, vec, ref in zip(cuts, got, refs, strict=True):
        np.testing.assert_allclose(vec, pooled(ref), rtol=1e-5, atol=1e-5, err_msg=cut)


def test_uint8_input_refuses_what_it_cannot_be_fed(tmp_path):
    src = uint8_nhwc(tmp_path / "u8.onnx")
    out = tmp_path / "u8.adopted.onnx"
    with pytest.raises(FeaturebankError, match="uint8, so it takes 0-255 pixels"):
        adopt(src, out, channel_order="rgb", input_size=32, pixel_range=1)
    with pytest.raises(FeaturebankError, match=r"drop mean=\(100, 100, 100\)"):
        adopt(src, out, channel_order="rgb", input_size=32, mean=[100, 100, 100])
    assert not out.exists()


def test_shapes_only_a_run_shows_give_the_whole_catalogue(tmp_path):
    """Static inference loses every shape after the Reshape; the stages and the catalogue
    come from one run, and 'layers' says which shapes did."""
    from featurebank.export import infer_shapes

    src = data_dependent(tmp_path / "dd.onnx")
    inferred = infer_shapes(onnx.load(str(src)), [1, 3, 32, 32])
    assert -1 in inferred["s2.relu"] and -1 in inferred["s3.relu"]  # what inference leaves
    assert "stage.2" not in {la.name for la in read_onnx_metadata(src).layers}  # no run: lost
    raw = {la.name: la for la in read_onnx_metadata(src, probe=True).layers}  # one probe run
    out = tmp_path / "dd.adopted.onnx"
    adopt(src, out, pixel_range=1, channel_order="rgb")
    adopted = {la.name: la for la in read_onnx_metadata(out).layers}
    for names in (raw, adopted):
        assert [names[f"stage.{k}"].tensor for k in (1, 2, 3)] == ["s1.relu", "res.relu", "s3.relu"]
        assert names["stage.2"].shape == (16, 8, 8) and names["head"].shape == (32, 4, 4)
        assert names["stage.2"].measured and names["head"].measured
        assert not names["stage.1"].measured and not names["logits"].measured
    cuts = ["stage.2", "stage.3", "pool"]
    pixels = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), np.uint8)
    got = Extractor(str(out), layers=cuts, device="cpu").embed_pixels(pixels)
    refs = outputs_of(src, [adopted[c].tensor for c in cuts],
                      pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255)
    for cut, vec, ref in zip(cuts, got, refs, strict=True):
        np.testing.assert_allclose(vec, pooled(ref), rtol=1e-5, atol=1e-5, err_msg=cut)


def test_layers_marks_the_shapes_a_run_measured(tmp_path, capsys):
    from featurebank.cli import main as cli

    src = data_dependent(tmp_path / "dd.onnx")
    assert cli(["layers", str(src)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line}
    assert "16x8x8 *" in rows["stage.2"] and "*" not in rows["stage.1"]
    assert rows["(*"].startswith("(* shape measured by running the graph once")
    assert cli(["layers", str(src), "--json"]) == 0
    listed = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
    assert listed["stage.3"]["measured"] is True and "measured" not in listed["stage.1"]

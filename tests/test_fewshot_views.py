"""The views the 10-shot benchmark averages over (benchmarks/_fewshot_views.py) show the garment
where their names say: a crop moves it inside its frame, never cuts it, and a mirror mirrors."""

import numpy as np
import pytest

from benchmarks._fewshot_views import VIEWS, render
from featurebank.datasets import load_labelled_images


def test_views_shift_mirror_and_keep_the_whole_garment():
    images = load_labelled_images("test")[0][:16]
    centre = render(images, "inv-pad4")
    side = images.shape[1] + 8
    assert centre.shape == (16, side, side) and centre.dtype == np.uint8
    np.testing.assert_array_equal(centre[:, 4:-4, 4:-4], 255 - images)  # dark on white
    for view, axis, step in (("left", 2, -2), ("right", 2, 2), ("up", 1, -2), ("down", 1, 2)):
        np.testing.assert_array_equal(render(images, f"inv-pad4-{view}"),
                                      np.roll(centre, step, axis=axis), err_msg=view)
    np.testing.assert_array_equal(render(images, "inv-pad4-flip"), centre[:, :, ::-1])
    np.testing.assert_array_equal(render(images, "plain"), images)
    ink = images.astype(np.int64).sum()
    for view in VIEWS:  # every pixel of every garment is in every view
        shown = render(images, view).astype(np.int64)
        assert (shown.sum() if view == "plain" else (255 - shown).sum()) == ink, view


def test_a_shift_beyond_the_frame_is_refused(monkeypatch):
    monkeypatch.setitem(VIEWS, "too-far", ("inv", 2, 3, 0, False))
    with pytest.raises(ValueError, match="beyond the frame"):
        render(np.zeros((1, 28, 28), np.uint8), "too-far")

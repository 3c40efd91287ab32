"""The predictions picture: high-contrast outlined skeletons, dashed ground truth, a legend with the
threshold, and a visible notice when no keypoint passes the threshold."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from aggpose_jax.data.synthetic import _palettes
from aggpose_jax.evaluate import draw
from aggpose_jax.evaluate.draw import LEGEND_HEIGHT, draw_predictions, draw_skeleton, no_keypoint_notice
from aggpose_jax.pose.keypoints import get_keypoint_set

KSET = get_keypoint_set("coco")
GREY = 128
H, W = 480, 640  # drawn at tile_height 320: scale 2/3


def person(image_id: int, x0: float, y0: float, score: float) -> dict:
    """17 joints on a 4x5 lattice in a 120x160 box at (x0, y0) (image px)."""
    kp = np.zeros((17, 3))
    kp[:, 0] = x0 + 30 * (np.arange(17) % 4)
    kp[:, 1] = y0 + 40 * (np.arange(17) // 4)
    kp[:, 2] = score
    return {"image_id": image_id, "keypoints": kp.reshape(-1).tolist()}


def render(tmp_path, results, name="p.png", **kw) -> np.ndarray:
    image = np.full((H, W, 3), GREY, np.uint8)
    out = draw_predictions([(7, image)], results, KSET, str(tmp_path / name), **kw)
    png = cv2.imread(out)
    assert png.shape == (320 + LEGEND_HEIGHT, 427, 3)
    return png


def centre(png: np.ndarray) -> np.ndarray:
    return png[150:170, 100:330]


def test_nothing_above_threshold_draws_a_notice(tmp_path, caplog):
    low = [person(7, 20, 20, 0.1)]  # top-left: away from the centre of the tile
    with caplog.at_level("WARNING", logger="aggpose_jax.evaluate.draw"):
        png = render(tmp_path, low, kpt_thre=0.2)
    assert no_keypoint_notice(0.2) == "no keypoint above threshold 0.2"
    assert "no keypoint above threshold 0.2 on image(s) 7" in caplog.text
    # The notice is a black box with white text across the tile's centre ...
    box = centre(png)
    assert (box == 0).all(axis=-1).mean() > 0.5 and (box > 200).all(axis=-1).any()
    # ... absent when a keypoint passes the threshold (nothing else drawn there, nothing logged).
    caplog.clear()
    with caplog.at_level("WARNING", logger="aggpose_jax.evaluate.draw"):
        ok = render(tmp_path, low, name="ok.png", kpt_thre=0.05)
    assert (centre(ok) == GREY).all() and not caplog.text
    # No results at all for the image: also the notice.
    assert (centre(render(tmp_path, [], name="none.png")) == 0).all(axis=-1).mean() > 0.5


def test_prediction_style_thick_white_with_dark_outline(tmp_path):
    png = render(tmp_path, [person(7, 60, 60, 0.9)])
    s = 320 / H
    kp = np.asarray(person(7, 60, 60, 0.9)["keypoints"]).reshape(-1, 3)
    for j in range(17):
        x, y = int(round(kp[j, 0] * s)), int(round(kp[j, 1] * s))
        assert (png[y, x] == 255).all(), j  # white joint disc
        assert (png[y - 9 : y + 10, x - 9 : x + 10] == 0).all(axis=-1).any(), j  # with a black outline
    # A limb: a white core 4 px thick, a black outline on both sides, then the background.
    canvas = np.full((100, 100, 3), GREY, np.uint8)
    draw_skeleton(canvas, np.array([[10, 50, 0.9], [90, 50, 0.9]]), [(0, 1)])
    column = canvas[:, 50].astype(int)
    assert (column[48:53] == 255).all() and (column[[45, 46, 54, 55]] == 0).all() and (column[[40, 60]] == GREY).all()


def test_ground_truth_is_drawn_dashed_and_legend_names_it(tmp_path):
    gt = person(7, 300, 20, 2.0)  # upper right: away from the notice
    png = render(tmp_path, [], name="gt.png", ground_truth=[gt])
    plain = render(tmp_path, [], name="plain.png")
    s = 320 / H
    kp = np.asarray(gt["keypoints"]).reshape(-1, 3)
    for j in range(17):
        x, y = int(round(kp[j, 0] * s)), int(round(kp[j, 1] * s))
        assert (png[y, x] == 0).all(), j  # black square joint core ...
        assert (png[y - 6 : y + 7, x - 6 : x + 7] == 255).all(axis=-1).any(), j  # ... with a white border
        assert (plain[y, x] == GREY).all()
    # Dashed: along a long limb (left hip 11 -> left knee 13, 80 px in the image) the core has gaps.
    a, b = kp[11, :2] * s, kp[13, :2] * s
    samples = [png[int(round(p[1])), int(round(p[0]))] for p in np.linspace(a, b, 40)[8:-8]]
    core = [bool((c == 0).all()) for c in samples]
    assert any(core) and not all(core)
    # The legend band names the ground truth only when it is given, and shows the threshold.
    legend_gt, legend_plain = png[320:], plain[320:]
    assert (legend_gt != legend_plain).any()
    other = render(tmp_path, [], name="thre.png", kpt_thre=0.5)
    assert (other[320:] != legend_plain).any() and (other[:320] != plain[:320]).any()  # 0.5 in legend, notice
    assert (legend_plain > 200).all(axis=-1).sum() > 100  # white legend text and sample


def test_scheme_is_far_from_the_synthetic_palettes():
    ours = [draw.PRED_COLOR, draw.PRED_OUTLINE, draw.GT_COLOR, draw.GT_OUTLINE]
    for name in ("coco", "infant"):
        edges, joints = _palettes(get_keypoint_set(name))
        theirs = np.asarray(edges + joints, float)
        for c in ours:
            assert np.linalg.norm(theirs - np.asarray(c, float), axis=1).min() > 100, (name, c)


def test_draw_skeleton_rejects_an_unknown_style():
    with pytest.raises(ValueError, match="style"):
        draw_skeleton(np.zeros((10, 10, 3), np.uint8), np.zeros((2, 3)), [(0, 1)], style="rainbow")

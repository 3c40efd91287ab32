"""Keypoint sets: COCO-17 and Infant-21 definitions, flip index, lookup, COCO categories."""

import pickle

import numpy as np
import pytest

from aggpose_jax.pose.keypoints import KeypointSet, get_keypoint_set

COCO_SIGMAS = [
    0.026,
    0.025,
    0.025,
    0.035,
    0.035,
    0.079,
    0.079,
    0.072,
    0.072,
    0.062,
    0.062,
    0.107,
    0.107,
    0.087,
    0.087,
    0.089,
    0.089,
]
# COCO's person skeleton exactly as in person_keypoints_*.json (1-based).
COCO_FILE_SKELETON = [
    [16, 14],
    [14, 12],
    [17, 15],
    [15, 13],
    [12, 13],
    [6, 12],
    [7, 13],
    [6, 7],
    [6, 8],
    [7, 9],
    [8, 10],
    [9, 11],
    [2, 3],
    [1, 2],
    [1, 3],
    [2, 4],
    [3, 5],
    [4, 6],
    [5, 7],
]


@pytest.mark.parametrize("name", ["coco", "infant"])
def test_flip_index_is_involution_swapping_exactly_the_pairs(name):
    ks = get_keypoint_set(name)
    fi = ks.flip_index
    assert fi.dtype == np.int32 and fi.shape == (ks.num_joints,)
    np.testing.assert_array_equal(fi[fi], np.arange(ks.num_joints))
    in_pair = {j for p in ks.flip_pairs for j in p}
    for a, b in ks.flip_pairs:
        assert fi[a] == b and fi[b] == a
    for j in range(ks.num_joints):
        if j not in in_pair:
            assert fi[j] == j
    # Flipping a joint array twice restores it; once moves each pair's values.
    x = np.arange(ks.num_joints) * 10
    assert not np.array_equal(x[fi], x) and np.array_equal(x[fi][fi], x)


def test_coco17_definition():
    ks = get_keypoint_set("coco")
    assert ks.num_joints == 17 and ks.names[0] == "nose" and ks.names[16] == "right_ankle"
    assert ks.flip_pairs == ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
    for a, b in ks.flip_pairs:  # pairs join left_X with right_X
        assert ks.names[a].replace("left_", "right_") == ks.names[b]
    assert ks.upper_body == tuple(range(11)) and ks.lower_body == tuple(range(11, 17))
    assert [[a + 1, b + 1] for a, b in ks.skeleton] == COCO_FILE_SKELETON
    assert ks.sigmas.dtype == np.float32
    np.testing.assert_allclose(ks.sigmas, COCO_SIGMAS, rtol=1e-6)
    assert ks.half_body_min_joints == 8


def test_infant21_definition():
    ks = get_keypoint_set("infant")
    assert ks.num_joints == 21
    assert ks.names[:9] == tuple(f"R{i}" for i in range(1, 10))
    assert ks.names[9:18] == tuple(f"L{i}" for i in range(1, 10))
    assert ks.names[18:] == ("M1", "M2", "M3")
    assert ks.flip_pairs == tuple((i, i + 9) for i in range(9))
    assert len(ks.skeleton) == 20 and (19, 20) in ks.skeleton and (0, 18) in ks.skeleton
    np.testing.assert_array_equal(ks.sigmas, np.full(21, 0.05, np.float32))
    assert ks.half_body_min_joints == 9
    assert set(ks.upper_body) == {0, 1, 2, 3, 4, 9, 10, 11, 12, 13, 18, 19}


@pytest.mark.parametrize("name", ["coco", "infant"])
def test_body_halves_partition_the_joints(name):
    ks = get_keypoint_set(name)
    assert not set(ks.upper_body) & set(ks.lower_body)
    assert sorted(ks.upper_body + ks.lower_body) == list(range(ks.num_joints))
    # Mirror joints are in the same half.
    fi = ks.flip_index
    assert {int(fi[j]) for j in ks.upper_body} == set(ks.upper_body)


def test_unknown_name_lists_known_sets():
    with pytest.raises(ValueError, match=r"unknown keypoint set 'mpii'.*coco.*infant"):
        get_keypoint_set("mpii")
    assert get_keypoint_set("COCO") is get_keypoint_set("coco")
    ks = get_keypoint_set("infant")
    assert get_keypoint_set(ks) is ks


def test_sigmas_are_read_only_and_sets_pickle():
    ks = get_keypoint_set("coco")
    with pytest.raises(ValueError):
        ks.sigmas[0] = 1.0
    back = pickle.loads(pickle.dumps(ks))
    assert back == ks and hash(back) == hash(ks) and back != get_keypoint_set("infant")
    np.testing.assert_array_equal(back.flip_index, ks.flip_index)


def test_from_coco_category_round_trip():
    coco = get_keypoint_set("coco")
    cat = {"id": 1, "name": "person", "keypoints": list(coco.names), "skeleton": COCO_FILE_SKELETON}
    ks = KeypointSet.from_coco_category(
        cat, flip_pairs=coco.flip_pairs, sigmas=COCO_SIGMAS, upper_body=range(11), name="coco"
    )
    assert ks == coco
    assert coco.to_coco_category()["skeleton"] == COCO_FILE_SKELETON


def test_from_coco_category_custom_and_validation():
    cat = {"name": "hand", "keypoints": ["a", "b", "c", "d"], "skeleton": [[1, 2], [2, 3], [3, 4]]}
    ks = KeypointSet.from_coco_category(
        cat, flip_pairs=[(0, 3)], sigmas=[0.1] * 4, upper_body=[0, 1], half_body_min_joints=2
    )
    assert ks.name == "hand" and ks.skeleton == ((0, 1), (1, 2), (2, 3))
    assert ks.upper_body == (0, 1) and ks.lower_body == (2, 3)
    np.testing.assert_array_equal(ks.flip_index, [3, 1, 2, 0])
    with pytest.raises(ValueError, match="sigmas has 3 values, expected 4"):
        KeypointSet.from_coco_category(cat, flip_pairs=[], sigmas=[0.1] * 3)
    with pytest.raises(ValueError, match=r"flip pair \(0, 4\) out of range"):
        KeypointSet.from_coco_category(cat, flip_pairs=[(0, 4)], sigmas=[0.1] * 4)
    with pytest.raises(ValueError, match="more than one flip pair"):
        KeypointSet.from_coco_category(cat, flip_pairs=[(0, 1), (1, 2)], sigmas=[0.1] * 4)
    with pytest.raises(ValueError, match=r"skeleton\[0\] = \[0, 1\] out of range"):
        KeypointSet.from_coco_category(dict(cat, skeleton=[[0, 1]]), flip_pairs=[], sigmas=[0.1] * 4)
    with pytest.raises(ValueError, match="missing field 'keypoints'"):
        KeypointSet.from_coco_category({"name": "x"}, flip_pairs=[], sigmas=[])

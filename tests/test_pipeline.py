"""Grain loaders: determinism, epochs, skipping, padding, sharding, resume (new process), workers."""

import json
import os
import subprocess
import sys
import textwrap

import cv2
import ml_collections
import numpy as np
import pytest

from aggpose_jax.data import pipeline as P

DECODED_KEY = P.DECODED

NO_AUG = dict(
    scale_factor=0.0, rotation_factor=0.0, rotation_prob=0.0, flip=False, half_body_prob=0.0, color_jitter_prob=0.0
)


def make_records(n, seed=0, bad=()):
    """Tiny person records with JPEG bytes; indices in ``bad`` get missing/corrupt bytes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = cv2.GaussianBlur(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), (0, 0), 1.5)
        data = cv2.imencode(".jpg", img)[1].tobytes()
        if i in bad:
            data = b"" if i % 2 == 0 else b"corrupt"
        kps = np.zeros((17, 3), np.float32)
        kps[:, 0] = rng.uniform(15, 50, 17)
        kps[:, 1] = rng.uniform(8, 40, 17)
        kps[:, 2] = rng.integers(0, 3, 17)
        out.append(
            {
                "image_id": np.int64(100 + i),
                "image_file": f"img_{seed}_{i}.jpg",
                "image_bytes": data,
                "bbox": np.array([10 + rng.uniform(0, 5), 5, 40, 36], np.float32),
                "keypoints": kps,
                "score": np.float32(1.0),
                "area": np.float32(1440.0),
            }
        )
    return out


def data_config(aug=None, num_workers=0):
    cfg = ml_collections.ConfigDict(
        {"image_size": (32, 24), "heatmap_size": (8, 6), "sigma": 2.0, "num_workers": num_workers, "keypoints": "coco"}
    )
    cfg.aug = ml_collections.ConfigDict(aug or {})
    return cfg


def loader(records, **kw):
    kw.setdefault("data_config", data_config())
    kw.setdefault("shard_index", 0)
    kw.setdefault("shard_count", 1)
    return P.make_loader(records, keypoint_set="coco", **kw)


def take(it, n):
    out = [next(it) for _ in range(n)]
    return out


def close(it):
    if hasattr(it, "close"):
        it.close()


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_train_batches_shapes_and_seed_determinism():
    recs = make_records(10)
    its = [iter(loader(recs, train=True, batch_size=4, seed=s)) for s in (3, 3, 4)]
    a, b, c = (take(it, 3) for it in its)
    for it in its:
        close(it)
    assert a[0]["image"].shape == (4, 32, 24, 3) and a[0]["image"].dtype == np.float32
    assert a[0]["target"].shape == (4, 8, 6, 17) and a[0]["target_weight"].shape == (4, 17)
    assert_batches_equal(a, b)
    assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_epochs_are_reshuffled_and_complete():
    recs = make_records(8)
    ld = loader(recs, data_config=data_config(NO_AUG), train=True, batch_size=8, seed=0, num_epochs=2, prefetch=0)
    batches = list(iter(ld))
    assert len(batches) == 2 and ld.batches_per_epoch == 1
    keys = [[x.tobytes() for x in b["image"]] for b in batches]
    assert sorted(keys[0]) == sorted(keys[1])  # same samples (no augmentation) ...
    assert keys[0] != keys[1]  # ... in a new order


def test_bad_images_are_skipped_and_counted():
    recs = make_records(9, seed=1, bad=(2, 5))
    ld = loader(recs, data_config=data_config(NO_AUG), train=True, batch_size=1, seed=0, num_epochs=2, prefetch=0)
    n = sum(1 for _ in iter(ld))
    assert n == 2 * 7
    assert ld.corrupt_images() == {"img_1_2.jpg": 2, "img_1_5.jpg": 2}


def test_bad_image_reports_are_removed_when_the_process_exits(tmp_path):
    script = textwrap.dedent("""
        import os, sys
        sys.path.insert(0, sys.argv[1])
        import test_pipeline as tp
        ld = tp.loader(tp.make_records(6, seed=3, bad=(1,)), data_config=tp.data_config(tp.NO_AUG), train=True,
                       batch_size=1, seed=0, num_epochs=1, prefetch=0)
        assert sum(1 for _ in iter(ld)) == 5 and ld.corrupt_images() == {"img_3_1.jpg": 1}
        assert os.path.isdir(ld.report_dir)
        print(ld.report_dir)
    """)
    out = subprocess.run(
        [sys.executable, "-c", script, os.path.dirname(__file__)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    report_dir = out.stdout.strip().splitlines()[-1]
    assert "aggpose_bad_images_" in report_dir and not os.path.exists(report_dir)


def test_eval_batches_are_padded_and_masked():
    recs = make_records(10, seed=2, bad=(4,))
    batches = list(iter(loader(recs, train=False, batch_size=4, prefetch=0)))
    assert [int(b["valid"].sum()) for b in batches] == [4, 4, 1]
    ids = np.concatenate([b["image_id"][b["valid"]] for b in batches])
    np.testing.assert_array_equal(ids, [100 + i for i in range(10) if i != 4])
    last = batches[-1]
    assert last["image"].shape == (4, 32, 24, 3) and not last["image"][1:].any()
    assert set(last) == {"image", "image_id", "center", "scale", "score", "area", "valid"}


def test_process_shards_are_disjoint_and_cover():
    recs = make_records(11, seed=3)
    seen = []
    for k in range(3):
        ld = loader(recs, train=False, batch_size=3, shard_index=k, shard_count=3, prefetch=0)
        seen.append({int(i) for b in iter(ld) for i in b["image_id"][b["valid"]]})
        assert ld.num_records == len(seen[-1])
    assert set().union(*seen) == {100 + i for i in range(11)}
    assert sum(map(len, seen)) == 11
    with pytest.raises(ValueError, match="shard_index"):
        loader(recs, train=False, batch_size=3, shard_index=3, shard_count=3)


_RESUME_SCRIPT = textwrap.dedent("""
    import importlib.util, json, sys
    import numpy as np

    def main():  # a fresh process: rebuild the loader, restore the state, take 4 batches
        spec = importlib.util.spec_from_file_location("tp", sys.argv[1])
        tp = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tp)
        ld = tp.loader(tp.make_records(13, seed=4, bad=(6,)), train=True, batch_size=3, seed=11,
                       worker_count=int(sys.argv[4]))
        it = iter(ld)
        it.set_state(json.loads(open(sys.argv[2]).read()))
        batches = tp.take(it, 4)
        tp.close(it)
        np.savez(sys.argv[3], **{f"{i}_{k}": v for i, b in enumerate(batches) for k, v in b.items()})

    if __name__ == "__main__":  # worker processes are spawned and re-import this file
        main()
""")


def _resume_in_new_process(tmp_path, worker_count):
    recs = make_records(13, seed=4, bad=(6,))
    ld = loader(recs, train=True, batch_size=3, seed=11, worker_count=worker_count)
    it = iter(ld)
    reference = take(it, 9)  # uninterrupted run
    close(it)
    it = iter(loader(recs, train=True, batch_size=3, seed=11, worker_count=worker_count))
    take(it, 5)
    state = it.get_state()
    close(it)
    (tmp_path / "state.json").write_text(json.dumps(state))
    (tmp_path / "resume.py").write_text(_RESUME_SCRIPT)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=path)
    subprocess.run(
        [
            sys.executable,
            str(tmp_path / "resume.py"),
            os.path.abspath(__file__),
            str(tmp_path / "state.json"),
            str(tmp_path / "out.npz"),
            str(worker_count),
        ],
        check=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    got = np.load(tmp_path / "out.npz")
    resumed = [{k: got[f"{i}_{k}"] for k in reference[0]} for i in range(4)]
    assert_batches_equal(resumed, reference[5:9])  # batches 5..8 of the uninterrupted run


def test_resume_from_saved_state_in_a_new_process(tmp_path):
    _resume_in_new_process(tmp_path, worker_count=0)


def _one_epoch(recs, **kw):
    cfg = data_config(NO_AUG)
    return list(iter(loader(recs, data_config=cfg, train=True, batch_size=1, seed=2, num_epochs=1, **kw)))


@pytest.mark.slow
def test_worker_processes(tmp_path):
    """Two workers: the epoch's samples in the same order as in-process (README: the sample stream does not
    depend on the loader's worker count), exact resume."""
    recs = make_records(12, seed=5)
    single, multi = _one_epoch(recs, prefetch=0), _one_epoch(recs, worker_count=2)
    assert len(multi) == len(single) == 12
    assert_batches_equal(multi, single)  # in order, not only the same set
    _resume_in_new_process(tmp_path, worker_count=2)


@pytest.mark.slow
def test_worker_processes_with_an_undecodable_image():
    """Two workers and a bad file: the same samples as in-process, the bad file counted once."""
    recs = make_records(12, seed=5, bad=(3,))
    single = _one_epoch(recs, prefetch=0)
    ld = loader(recs, data_config=data_config(NO_AUG), train=True, batch_size=1, seed=2, num_epochs=1, worker_count=2)
    multi = list(iter(ld))
    key = lambda bs: sorted(b["image"].tobytes() + b["target"].tobytes() for b in bs)  # noqa: E731
    assert len(multi) == len(single) == 11 and key(multi) == key(single)
    assert ld.corrupt_images() == {"img_5_3.jpg": 1}


@pytest.mark.slow
def test_worker_order_with_an_undecodable_image():
    """The rows after a dropped image keep the in-process order with two workers (they were once reordered)."""
    recs = make_records(12, seed=5, bad=(3,))
    assert_batches_equal(_one_epoch(recs, worker_count=2), _one_epoch(recs, prefetch=0))
    recs = make_records(14, seed=8, bad=(2, 9))  # batches of 3: two workers' batches are re-cut in order
    cfg = data_config(NO_AUG)
    got = [loader(recs, data_config=cfg, train=True, batch_size=3, seed=4, worker_count=w) for w in (0, 2)]
    its = [iter(ld) for ld in got]
    single, multi = take(its[0], 10), take(its[1], 10)
    for it in its:
        close(it)
    assert_batches_equal(multi, single)


def test_state_between_skipped_rows_restores_exactly():
    """After a skipped image each batch ends inside a Grain batch; every saved state resumes the same batches."""
    recs = make_records(10, seed=7, bad=(1, 4))
    make = lambda: loader(recs, train=True, batch_size=3, seed=5, prefetch=0)  # noqa: E731
    it = iter(make())
    states, reference = [], []
    for _ in range(8):
        states.append(it.get_state())
        reference.append(next(it))
    close(it)
    assert any(s.get("carry") for s in states)  # some states point into a batch's kept rows
    for k in (1, 3, 6):
        resumed = iter(make())
        resumed.set_state(json.loads(json.dumps(states[k])))
        assert_batches_equal(take(resumed, 8 - k), reference[k:])
        close(resumed)
    flat = np.concatenate([b["image"] for b in reference])
    assert len(flat) == 24 and all(b["image"].shape[0] == 3 and DECODED_KEY not in b for b in reference)


def test_visualize_grid_overlays_targets():
    from aggpose_jax.data import visualize as V

    it = iter(loader(make_records(6, seed=6), train=True, batch_size=5, seed=1, prefetch=0))
    batch = next(it)
    close(it)
    grid = V.render_grid(batch, [(5, 6), (11, 12)], num=5)
    assert grid.shape == (2 * (32 + 4) + 4, 3 * (24 + 4) + 4, 3) and grid.dtype == np.uint8
    tile = V.render_sample({k: v[0] for k, v in batch.items()}, [])
    plain = cv2.cvtColor(V.denormalize(batch["image"][0]), cv2.COLOR_RGB2BGR)
    hot = batch["target"][0].max(axis=-1) > 0.5  # heat is blended in where the targets peak
    assert hot.any()
    hot_px = cv2.resize(hot.astype(np.uint8), (24, 32), interpolation=cv2.INTER_NEAREST) > 0
    assert np.abs(tile.astype(int) - plain.astype(int))[hot_px].mean() > 20
    np.testing.assert_allclose(
        V.denormalize(batch["image"][0]) / 255.0,
        batch["image"][0] * [0.229, 0.224, 0.225] + [0.485, 0.456, 0.406],
        atol=0.5 / 255 + 1e-6,
    )


def test_make_source_and_loaders_from_a_coco_root(synthetic_coco_root, tmp_path):
    import shutil

    root = str(tmp_path / "root")
    shutil.copytree(synthetic_coco_root, root)
    cfg = data_config()
    cfg.update(
        {
            "root": root,
            "source": "coco_json",
            "use_gt_bbox": True,
            "detections_file": "person_detections_val2017.json",
            "det_score_threshold": 0.0,
        }
    )
    train_src = P.make_source(cfg, "train")
    victim = train_src[0]["image_file"]
    os.remove(os.path.join(root, "train2017", victim))  # a missing file is skipped, not fatal
    ld = loader(train_src, data_config=cfg, train=True, batch_size=4, seed=0, num_epochs=1, prefetch=0)
    n = sum(len(b["image"]) for b in iter(ld))
    lost = sum(1 for i in range(len(train_src)) if train_src[i]["image_file"] == victim)
    assert n == (len(train_src) - lost) // 4 * 4 and ld.corrupt_images() == {victim: lost}
    val_gt = P.make_source(cfg, "val")
    cfg.use_gt_bbox = False
    val_det = P.make_source(cfg, "val")
    assert len(val_gt) > 0 and len(val_det) > 0
    batch = next(iter(loader(val_det, data_config=cfg, train=False, batch_size=4, prefetch=0)))
    assert batch["image"].shape == (4, 32, 24, 3) and batch["valid"].any()
    cfg.source = "lmdb"
    with pytest.raises(ValueError, match="lmdb"):
        P.make_source(cfg, "train")

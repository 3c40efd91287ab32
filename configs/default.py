"""Quickstart: a small AggPose trained and evaluated on a generated synthetic COCO-17 set, on CPU.

    python -m aggpose_jax.main --config configs/default.py --workdir workdir/default

The dataset (stick figures, 240x320 images) is generated into <workdir>/synthetic on the first run.
Model: 'aggpose_tiny' widths (16, 32, 40, 64), one or two blocks per stage, 128x96 input, 32x24
heatmaps. Trains 1000 steps of 16 crops, then evaluates on the synthetic val split (GT boxes, flip
test, DARK decoding; AP ~0.6) and draws predictions into <workdir>/eval/step_*/predictions.png.
"""

from aggpose_jax.config import base_config


def get_config():
    c = base_config()
    c.seed = 0
    c.model.name = "aggpose_tiny"
    c.model.drop_path_rate = 0.0
    c.model.unroll_blocks = True  # XLA:CPU differentiates scanned blocks much more slowly
    c.data.root = ""  # generate <workdir>/synthetic
    c.data.keypoints = "coco"
    c.data.image_size = (128, 96)
    c.data.heatmap_size = (32, 24)
    c.data.sigma = 1.5
    c.data.num_workers = 0
    c.data.synthetic.num_images = 600
    c.data.synthetic.image_size = (240, 320)
    c.data.aug.rotation_factor = 30.0
    c.data.aug.half_body_prob = 0.0
    c.data.aug.color_jitter_prob = 0.2
    # A small batch and a high rate: the fastest way out of the initial all-zero-heatmap plateau on CPU.
    c.optim.lr = 5e-3
    c.optim.weight_decay = 1e-4
    c.optim.decay_mask = "kernels"
    c.optim.schedule = "cosine"
    c.optim.warmup_epochs = 0.2
    c.optim.grad_clip_norm = 1.0
    c.train.batch_size = 16
    c.train.num_steps = 1000  # ~13 epochs of the ~1240 synthetic training people
    c.train.log_every_steps = 50
    c.train.checkpoint_every_steps = 250
    c.train.keep_checkpoints = 2
    c.eval.every_steps = 0
    c.eval.every_epochs = 0.0  # evaluate at the end only
    c.eval.batch_size = 32
    c.eval.draw_images = 4
    return c

"""AggPose-L, COCO-17, 256x192: the release's recipe (experiments/coco/aggpose/aggpose_L_256x192_adamw_lr1e-3.yaml).

    python -m aggpose_jax.main --config configs/coco_aggpose_l_256x192.py --workdir runs/l \
        --config.data.root=/data/coco --config.init.mit_checkpoint=mit_b5.pth

AdamW lr 1e-3 (weight decay: PyTorch's default 0.01 on every parameter, because the release does not
pass its WD to the optimizer), batch 32 per GPU x 4 = 128, x0.1 at epochs 170/200/240, no warmup,
250 epochs (the release yaml says END_EPOCH 500, but the rate is already 1e-6 after epoch 240),
Gaussian targets sigma 2, flip test, GT boxes. Backbone from MiT-B5 ImageNet weights.
"""

from aggpose_jax.config import base_config


def get_config():
    c = base_config()
    c.model.name = "aggpose_l"
    c.model.drop_path_rate = 0.1
    c.data.keypoints = "coco"
    c.data.image_size = (256, 192)
    c.data.heatmap_size = (64, 48)
    c.data.sigma = 2.0
    c.data.num_workers = 8
    c.data.use_gt_bbox = True  # False: c.data.detections_file = .../COCO_val2017_detections_AP_H_56_person.json
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.01
    c.optim.decay_mask = "all"  # as the release; 'kernels' exempts norms and biases
    c.optim.schedule = "multistep"
    c.optim.decay_epochs = (170.0, 200.0, 240.0)
    c.optim.decay_factor = 0.1
    c.optim.warmup_epochs = 0.0
    c.train.batch_size = 128
    c.train.num_epochs = 250.0
    c.train.checkpoint_every_steps = 2000
    c.train.log_every_steps = 100
    c.eval.every_epochs = 10.0
    c.eval.batch_size = 128
    c.eval.flip_test = True
    c.init.mit_checkpoint = ""  # path to SegFormer's mit_b5.pth
    return c

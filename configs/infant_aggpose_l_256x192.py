"""AggPose-L fine-tuned on the infant set (21 joints), 256x192: the release's recipe
(experiments/infantpose/aggpose/aggpose_L_256x192.yaml).

    python -m aggpose_jax.main --config configs/infant_aggpose_l_256x192.py --workdir runs/infant \
        --config.data.root=/data/InfantPose --config.init_checkpoint=pose_aggpose_l_256x192.pth

Starts from a COCO checkpoint (.pth or converted directory): every tensor but the 17-joint output
layer (``final_layer.fc2``) is loaded; that layer is re-initialised for 21 joints. AdamW lr 1e-4,
x0.1 at epochs 50 and 80 of 100, batch 128, half-body augmentation needs > 9 visible joints
(from the infant keypoint set), OKS sigmas 0.05, no OKS-NMS in evaluation (as the release).
"""

from aggpose_jax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "coco_aggpose_l_256x192.py")
    c.data.keypoints = "infant"
    c.optim.lr = 1e-4
    c.optim.decay_epochs = (50.0, 80.0)
    c.train.num_epochs = 100.0
    c.eval.every_epochs = 5.0
    c.eval.oks_nms_thre = -1.0  # < 0: no OKS-NMS
    c.init_checkpoint = ""  # COCO AggPose-L checkpoint to fine-tune from
    return c

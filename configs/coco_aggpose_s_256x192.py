"""AggPose-S, COCO-17, 256x192: the AggPose-L recipe with MiT-B2 widths/depths (backbone from mit_b2).

    python -m aggpose_jax.main --config configs/coco_aggpose_s_256x192.py --workdir runs/s \
        --config.data.root=/data/coco --config.init.mit_checkpoint=mit_b2.pth
"""

from aggpose_jax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "coco_aggpose_l_256x192.py")
    c.model.name = "aggpose_s"
    c.init.mit_checkpoint = ""  # path to SegFormer's mit_b2.pth
    return c

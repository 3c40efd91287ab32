"""AggPose-S, COCO-17, 256x192: the AggPose-L recipe with MiT-B2 widths/depths (backbone from mit_b2).

    python -m aggpose_jax.main --config configs/coco_aggpose_s_256x192.py --workdir runs/s \
        --config.data.root=/data/coco --config.init.mit_checkpoint=mit_b2.pth
"""

import importlib.util
import os


def _load_l():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'coco_aggpose_l_256x192.py')
    spec = importlib.util.spec_from_file_location('coco_aggpose_l_256x192', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config():
    c = _load_l().get_config()
    c.model.name = 'aggpose_s'
    c.init.mit_checkpoint = ''  # path to SegFormer's mit_b2.pth
    return c

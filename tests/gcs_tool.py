"""``python tests/gcs_tool.py COMMAND URL [ARG]``: look into a gs:// workdir on the emulator (tests only; the
environment points gcsfs and TensorStore at it).

  objects URL            JSON {name relative to URL: generation} of every object under URL
  write URL TEXT         write TEXT to the object URL
  truncate-arrays URL    every array data file under URL (objects in a folder named d) cut to half its size
  params URL OUT.npz     the parameters of the latest training checkpoint of workdir URL, saved to OUT.npz
"""

from __future__ import annotations

import json
import sys

from aggpose_jax import storage

command, url, *rest = sys.argv[1:]
if command == "objects":
    fs = storage._gcs()
    key = url.split("://", 1)[1]
    found = fs.find(key, detail=True) if fs.exists(key) else {}
    print(json.dumps({name[len(key) + 1 :]: info.get("generation") for name, info in found.items()}))
elif command == "write":
    storage.write_text(url, rest[0])
elif command == "truncate-arrays":
    fs = storage._gcs()
    for name in fs.find(url.split("://", 1)[1]):
        if name.split("/")[-2] == "d":
            data = fs.cat_file(name)
            fs.pipe_file(name, data[: len(data) // 2])
elif command == "params":
    import jax
    import numpy as np
    from ml_collections import ConfigDict

    from aggpose_jax.config import model_config
    from aggpose_jax.params import abstract_params
    from aggpose_jax.train.checkpoints import restore_params

    cfg = model_config(ConfigDict(json.loads(storage.read_text(storage.join(url, "config.json")))))
    step, params = restore_params(storage.join(url, "checkpoints"), abstract_params(cfg))
    np.savez(rest[0], *[np.asarray(a) for a in jax.tree.leaves(params)], step=step)
else:
    raise SystemExit(f"gcs_tool: unknown command {command!r}")

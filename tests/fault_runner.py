"""``python tests/fault_runner.py MAIN_ARGS...``: the main job with a fault injected (tests only).

AGGPOSE_FAULT selects it:
  kill_at_step=N     SIGKILL when the training loop is about to run step N+1 (N steps done, saves finished)
  kill_during_save=N SIGKILL right after the asynchronous save of step N has started
  enospc_at_save=N   the checkpoint writer raises ENOSPC while writing step N's arrays
  slow_steps=S       every step takes S seconds longer (a sleep before it, in the main process)
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time

from aggpose_jax.train import checkpoints, loop

kind, _, value = os.environ.get("AGGPOSE_FAULT", "").partition("=")
target = float(value or 0) if kind == "slow_steps" else int(value or 0)

if kind == "kill_at_step":
    init = loop.Trainer.__init__

    def init_with_callback(self, *args, **kwargs):
        def callback(step, batch):
            if step == target:
                self.checkpointer.wait()  # "between checkpoints": the earlier save is complete
                os.kill(os.getpid(), signal.SIGKILL)

        init(self, *args, batch_callback=callback, **kwargs)

    loop.Trainer.__init__ = init_with_callback
elif kind == "slow_steps":
    init = loop.Trainer.__init__

    def init_with_sleep(self, *args, **kwargs):
        init(self, *args, batch_callback=lambda step, batch: time.sleep(target), **kwargs)

    loop.Trainer.__init__ = init_with_sleep
elif kind in ("kill_during_save", "enospc_at_save"):
    import orbax.checkpoint as ocp

    save = checkpoints.TrainCheckpointer.save
    serialize = ocp.type_handlers.ArrayHandler.serialize

    async def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    def faulty_save(self, step, *args, **kwargs):
        if kind == "enospc_at_save" and step == target:
            ocp.type_handlers.ArrayHandler.serialize = disk_full
        try:
            save(self, step, *args, **kwargs)
        finally:
            ocp.type_handlers.ArrayHandler.serialize = serialize
        if kind == "kill_during_save" and step == target:
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoints.TrainCheckpointer.save = faulty_save
elif kind:
    raise SystemExit(f"AGGPOSE_FAULT: unknown fault {kind!r}")

if __name__ == "__main__":
    from aggpose_jax.main import cli

    sys.argv = ["aggpose_jax.main", *sys.argv[1:]]
    cli()

"""Training progress: one console line per ``log_every`` steps, and TensorBoard scalars (tensorboardX).

Only process 0 prints and writes TensorBoard events.
"""

from __future__ import annotations

import time

import jax

from aggpose_jax import storage
from aggpose_jax.logs import log


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    """Images/s and ETA over the steps since the last report; console line + TensorBoard."""

    def __init__(self, workdir: str, total_steps: int, global_batch: int, *, tensorboard: bool = True):
        self.total_steps = int(total_steps)
        self.global_batch = int(global_batch)
        self.is_main = jax.process_index() == 0
        self.writer = None
        self.tb_dir = storage.join(workdir, "tb")
        # tensorboardX writes local files; for a gs:// workdir they are copied up (at most once a minute, and
        # at the end: each copy sends the whole events file)
        self._tb_local = storage.local_folder(self.tb_dir)
        self._uploaded = float("-inf")
        if tensorboard and self.is_main:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(self._tb_local)
        self._last_step: int | None = None
        self._last_time = time.perf_counter()

    def start(self, step: int) -> None:
        """Reset the rate clock (after compilation or an evaluation)."""
        self._last_step, self._last_time = int(step), time.perf_counter()

    def report(self, step: int, loss: float, lr: float, extra: dict[str, float] | None = None) -> str:
        now = time.perf_counter()
        steps = step - (self._last_step if self._last_step is not None else step)
        elapsed = now - self._last_time
        rate = steps * self.global_batch / elapsed if steps > 0 and elapsed > 0 else float("nan")
        eta = (self.total_steps - step) * elapsed / steps if steps > 0 else float("nan")
        self._last_step, self._last_time = step, now
        line = (
            f"step {step}/{self.total_steps} | loss {loss:.6f} | lr {lr:.3e} | {rate:.1f} img/s | "
            f"ETA {format_duration(eta) if eta == eta else '?'}"
        )
        for key, value in (extra or {}).items():
            line += f" | {key} {value:.4g}"
        if self.is_main:
            log.info(line)
        self.scalars(
            step,
            {
                "train/loss": loss,
                "train/learning_rate": lr,
                **({"train/images_per_second": rate} if rate == rate else {}),
                **{f"train/{k}": v for k, v in (extra or {}).items()},
            },
        )
        return line

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, float(value), int(step))
            self.writer.flush()
            if time.monotonic() - self._uploaded > 60:
                self._upload()

    def _upload(self) -> None:
        if self._tb_local != self.tb_dir:
            storage.put_folder(self._tb_local, self.tb_dir)
            self._uploaded = time.monotonic()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self._upload()

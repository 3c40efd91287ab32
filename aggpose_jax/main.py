"""Train and/or evaluate AggPose: ``python -m aggpose_jax.main --config CONFIG.py --workdir DIR``.

    --mode train|eval|train_and_eval (default train_and_eval)
    --config.<key>=<value>     override any config value (ml_collections.config_flags)

Everything is checked (flags, config keys and types, values, workdir writability) before anything
is written. With ``data.root=''`` a synthetic COCO-17 dataset is generated into <workdir>/synthetic.
Multi-process (TPU pods, SLURM, several GPU hosts): set ``AGGPOSE_DISTRIBUTED=1`` (or
``JAX_COORDINATOR_ADDRESS``) and ``jax.distributed.initialize()`` is called first.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
import uuid
from typing import Any, Sequence

from absl import app, flags
from ml_collections import ConfigDict, config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs, metrics and predictions.')
_MODE = flags.DEFINE_enum('mode', 'train_and_eval', ['train', 'eval', 'train_and_eval'], 'What to run.')


def _fail(message: str, code: int = 2) -> None:
    print(f'error: {message}', file=sys.stderr, flush=True)
    sys.exit(code)


def _load_config_file(path: str) -> ConfigDict:
    spec = importlib.util.spec_from_file_location('_aggpose_config', path)
    if spec is None or spec.loader is None or not os.path.isfile(path):
        raise ValueError(f'--config: {path}: no such config file')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _config_path(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith('--config='):
            return arg.split('=', 1)[1]
        if arg == '--config' and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _explain_override_error(argv: Sequence[str], reference: ConfigDict) -> str | None:
    """Name the first ``--config.<key>`` flag whose key does not exist in the config file."""
    for arg in argv:
        hit = re.match(r'--config\.([\w.]+)(=|$)', arg)
        if not hit:
            continue
        node: Any = reference
        walked = []
        for part in hit.group(1).split('.'):
            if not isinstance(node, ConfigDict) or part not in node:
                options = list(node.keys()) if isinstance(node, ConfigDict) else []
                close = difflib.get_close_matches(part, options, n=1)
                where = '.'.join(walked) or 'the top level'
                hint = f'; did you mean {".".join(walked + close)!r}?' if close else f'; keys in {where}: {sorted(options)}'
                return f'--config.{hit.group(1)}: unknown config key {".".join(walked + [part])!r}{hint}'
            walked.append(part)
            node = node[part]
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors naming the flag or config key (exit code 2)."""
    try:
        return flags.FLAGS(argv)
    except Exception as err:  # noqa: BLE001 -- absl/ml_collections raise several types
        message = ' '.join(str(err).split())
        path = _config_path(argv)
        if path:
            try:
                reference = _load_config_file(path)
            except Exception as load_err:  # noqa: BLE001
                _fail(f'--config: cannot load {path}: {type(load_err).__name__}: {load_err}')
            message = _explain_override_error(argv, reference) or message
        _fail(message)
    return []


def check_workdir(workdir: str) -> str:
    """Create ``workdir`` and prove it writable; raises ``ValueError`` naming it otherwise."""
    workdir = os.path.abspath(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f'.write_test_{uuid.uuid4().hex}')
        with open(probe, 'w') as f:
            f.write('ok')
        os.remove(probe)
    except OSError as err:
        raise ValueError(f'--workdir: {workdir} is not writable ({err.strerror or err})') from None
    return workdir


def maybe_initialize_distributed() -> None:
    """``jax.distributed.initialize()`` when the environment asks for it (launch/ scripts set it)."""
    want = os.environ.get('AGGPOSE_DISTRIBUTED', '').lower() in ('1', 'true', 'yes')
    if want or os.environ.get('JAX_COORDINATOR_ADDRESS'):
        import jax
        jax.distributed.initialize()


def prepare_data(config: ConfigDict, workdir: str) -> None:
    """``data.root=''``: generate the synthetic set into <workdir>/synthetic once (process 0), then use it."""
    if config.data.root:
        return
    import jax
    root = os.path.join(workdir, 'synthetic')
    ann = os.path.join(root, 'annotations', 'person_keypoints_val2017.json')
    if jax.process_index() == 0 and not os.path.isfile(ann):
        from aggpose_jax.data.synthetic import generate_synthetic
        from aggpose_jax.logging_utils import log
        syn = config.data.synthetic
        log.info('generating a synthetic %s dataset (%d images) in %s', config.data.keypoints, syn.num_images, root)
        tmp = f'{root}.tmp{os.getpid()}'
        generate_synthetic(tmp, keypoints=config.data.keypoints, num_images=int(syn.num_images), seed=int(syn.seed),
                           image_size=tuple(syn.image_size), val_fraction=float(syn.val_fraction))
        os.replace(tmp, root)  # complete or absent: an interrupted run regenerates
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices('aggpose_synthetic_data')
    config.data.root = root
    if not config.data.use_gt_bbox and not config.data.detections_file:
        config.data.detections_file = os.path.join(root, 'person_detections_val2017.json')


def run(config: ConfigDict, workdir: str, mode: str) -> int:
    """Validate, then train/evaluate. Returns the process exit code."""
    from aggpose_jax.train_config import validate_config

    try:
        validate_config(config)
        workdir = check_workdir(workdir)
    except ValueError as err:
        _fail(str(err))
    from aggpose_jax.logging_utils import log, setup_logging, write_json
    setup_logging()
    maybe_initialize_distributed()
    prepare_data(config, workdir)
    write_json(os.path.join(workdir, 'config.json'), config.to_dict())
    try:
        if mode == 'eval':
            metrics = evaluate_only(config, workdir)
            log.info('AP %.4f; metrics in %s', metrics['AP'], os.path.join(workdir, 'metrics.json'))
            return 0
        from aggpose_jax.train import NonFiniteLossError, Trainer
        trainer = Trainer(config, workdir)
        try:
            result = trainer.fit(evaluate=mode == 'train_and_eval')
        except NonFiniteLossError as err:
            _fail(str(err), code=1)
        finally:
            trainer.close()
        if result.preempted:
            log.info('preempted at step %d; rerun the same command to resume', result.step)
        elif result.metrics:
            log.info('done: step %d, AP %.4f', result.step, result.metrics['AP'])
        return 0
    except (ValueError, FileNotFoundError) as err:
        _fail(' '.join(str(err).split()))
    return 0


def evaluate_only(config: ConfigDict, workdir: str) -> dict[str, float]:
    """Evaluate ``config.init_checkpoint`` (.pth or converted directory), else the workdir's latest
    training checkpoint."""
    from aggpose_jax.eval_job import make_predict_fn, run_evaluation
    from aggpose_jax.initialization import eval_model_config, split_model
    from aggpose_jax.train import record_metrics
    from aggpose_jax.train_config import model_config

    model_cfg = model_config(config)
    if config.init_checkpoint:
        model_cfg, params = eval_model_config(config, model_cfg)
        name, step = os.path.basename(os.path.normpath(config.init_checkpoint)), 0
    else:
        from aggpose_jax.train import Trainer
        trainer = Trainer(config, workdir)
        step = trainer.checkpointer.latest_step()
        if step is None:
            raise ValueError(f'config.init_checkpoint: empty and no training checkpoint in {workdir}/checkpoints')
        params = trainer.checkpointer.restore_state(step, trainer.abstract_state)['params']
        trainer.close()
        name = f'step_{step:08d}'
    graphdef, _, other = split_model(model_cfg)
    out_dir = os.path.join(workdir, 'eval', name)
    metrics = run_evaluation(config, make_predict_fn(graphdef, other, params), out_dir)
    record_metrics(workdir, step, metrics, out_dir)
    return metrics


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        _fail(f'unexpected arguments: {" ".join(argv[1:])}')
    if _WORKDIR.value is None:
        _fail('--workdir is required')
    path = _config_path(sys.argv)
    if path is None:
        _fail('--config is required (e.g. --config configs/default.py)')
    config = _CONFIG.value
    if not isinstance(config, ConfigDict):
        _fail(f'--config: cannot load {path}' + ('' if os.path.isfile(path) else ' (no such file)'))
    from aggpose_jax.train_config import check_types
    try:
        check_types(config, _load_config_file(path))
    except ValueError as err:
        _fail(str(err))
    sys.exit(run(config, _WORKDIR.value, _MODE.value))


def cli() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
    cli()

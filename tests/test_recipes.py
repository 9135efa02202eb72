"""The training recipes end to end on real CIFAR-10 images, and what they are built from.

- configs: every shipped config loads; unknown keys, bad values and missing files are clear errors;
- a 1-process curriculum run and a finetune run from it write metrics.jsonl, steps.jsonl, the resolved config
  and a checkpoint folder that ``blockdrop eval --checkpoint`` and ``local-dir:`` load;
- a 2-process CPU run (``accelerate launch --multi_gpu --num_processes 2``, Accelerator(cpu=True)) evaluates to
  exactly the 1-process metrics and its first training losses track the 1-process ones (same global batch and seed)
  within LOSS_TOLERANCE: the batches, augmentations and sampled policies are the same (per-sample seeds); what
  differs is BatchNorm's batch statistics in the policy network (per process) and summation order;
- ``kill -9`` during an epoch, then ``--resume-from latest``: at most one checkpoint interval lost, and the resumed
  run ends with exactly the metrics of an uninterrupted run;
- bad input (config, dataset columns, checkpoint architecture, resume folder, alpha, gamma): exit status 2 and one
  line that names the problem.
"""
import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
import yaml

from timm_blockdrop.tools.cli import main as blockdrop_main
from timm_blockdrop.train.config import STAGES, TrainConfig, load_config, parse_set
from timm_blockdrop.train.checkpointing import checkpoint_dirs
from timm_blockdrop.train.schedule import lr_scheduler
from timm_blockdrop.train.stats import PolicyStats

from conftest import CIFAR10, REPO, RESNET_FILES

CONFIGS = REPO / 'recipes' / 'configs'
CL_CONFIG = CONFIGS / 'cifar10_resnet32_cl.yaml'
FT_CONFIG = CONFIGS / 'cifar10_resnet32_ft.yaml'
VAL_ROWS = 'train[-5000:]'  # the configs' eval_split 'val' (the last 5,000 training images) as blockdrop eval --split
LOSS_TOLERANCE = 0.02  # curriculum, absolute, on losses of about 0.5 (1-process vs 2-process, first 4 steps)
CE_TOLERANCE = 0.5     # finetune, absolute, on cross-entropies of about 5 (fresh policy dropping half the blocks)
N_TRAIN, N_EVAL, BATCH, EPOCHS, CKPT_EVERY = 256, 200, 32, 2, 5  # 8 steps per epoch
# small runs: 256 training / 200 test images (200 is not a multiple of 2 x 64: the 2-process eval pads and
# gather_for_metrics must drop the padding), per-step logs, a checkpoint every 5 steps
RUN_ARGS = ['--max-train-samples', str(N_TRAIN), '--max-eval-samples', str(N_EVAL), '--batch-size', str(BATCH),
            '--epochs', str(EPOCHS), '--data', str(CIFAR10), '--set', 'num_workers=0', '--set', 'eval_batch_size=64',
            '--set', 'eval_every_epochs=1', '--set', 'log_every_steps=1',
            '--set', f'checkpoint_every_steps={CKPT_EVERY}', '--set', 'eval_at_start=true']
EPOCH_KEYS = {'epoch', 'step', 'lr', 'images_per_s', 'train_accuracy', 'train_reward', 'train_blocks_mean',
              'train_blocks_std', 'train_unique_policies', 'train_loss', 'val_accuracy', 'val_reward',
              'val_blocks_mean', 'val_blocks_std', 'val_unique_policies', 'val_images'}


def _env():
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1',
               HF_EVALUATE_OFFLINE='1', TOKENIZERS_PARALLELISM='false')
    env.pop('ACCELERATE_CONFIG_FILE', None)
    return env


def _recipe(name, *args, launcher=(), wait=True):
    cmd = [*launcher, str(REPO / 'recipes' / f'{name}.py'), *map(str, args)]
    if not launcher:
        cmd = [sys.executable, *cmd]
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _without_timing(records):
    return [{k: v for k, v in r.items() if k != 'images_per_s'} for r in records]


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def cl_run(tmp_path_factory, shared):
    out = tmp_path_factory.mktemp('cl') / 'run'
    log = _recipe('curriculum', '--config', CL_CONFIG, '--output-dir', out, *RUN_ARGS)
    return out, log


@pytest.fixture(scope='module')
def ft_run(tmp_path_factory, cl_run):
    out = tmp_path_factory.mktemp('ft') / 'run'
    log = _recipe('finetune', '--config', FT_CONFIG, '--init-from', cl_run[0], '--output-dir', out,
                  *RUN_ARGS[:-2], '--epochs', '1')
    return out, log


# ---- configs ----

def test_every_shipped_config_loads():
    names = sorted(p.stem for p in CONFIGS.glob('*.yaml'))
    assert names == sorted([f'{d}_{s}' for d in ('cifar10_resnet32', 'cifar10_resnet110', 'cifar100_resnet56',
                                                 'imagenet_resnet101') for s in ('cl', 'ft')]
                           + ['cifar10_resnet32_cl_cpu', 'cifar10_resnet32_ft_cpu']  # the first release's recipe
                           + ['cifar10_resnet32_budget7_robust_ft', 'cifar10_resnet32_budget7_cl',
                              'cifar10_resnet32_budget7_ft',  # the budgeted recipe (robust base, policy, joint)
                              'cifar10_resnet32_budget7_stem_cl',  # and its policy on the stem
                              'cifar10_resnet32_robust_range_ft']  # a base robust at 4-10 blocks
                           + ['cifar10_resnet56_robust_range_ft', 'cifar10_resnet56_budget13_cl',
                              'cifar10_resnet56_budget13_ft'])  # the budgeted ResNet-56 recipe
    for name in names:
        config = load_config(CONFIGS / f'{name}.yaml')
        assert config.stage == {'cl': 'curriculum', 'ft': 'finetune'}[name.removesuffix('_cpu').rsplit('_', 1)[1]]
        assert timm.is_model(config.model.split('.')[0])
        assert config.output_dir == f'outputs/{name}'
        if config.stage == 'finetune' and config.fixed_policy is None:
            assert config.init_from == f"outputs/{name.replace('_ft', '_cl')}" and config.beta == 0
        elif config.stage == 'finetune':  # a robust-base stage: the ResNet alone under a heuristic, from its weights
            assert config.init_from is None and config.pretrained_file
    imagenet = load_config(CONFIGS / 'imagenet_resnet101_ft.yaml')
    assert imagenet.streaming and imagenet.gamma == 5 and imagenet.data == 'ILSVRC/imagenet-1k'
    c100 = load_config(CONFIGS / 'cifar100_resnet56_cl.yaml')
    assert c100.label_column == 'fine_label' and c100.data == 'uoft-cs/cifar100'
    assert Path(c100.pretrained_file).is_file() and c100.model_kwargs == {'shortcut': 'B'}


def test_config_overrides_and_types(tmp_path):
    config = load_config(CL_CONFIG, {'epochs': 3, 'lr': '2e-4', 'decay_epochs': [1, 2]})
    assert config.epochs == 3 and config.lr == 2e-4 and config.decay_epochs == [1.0, 2.0]
    assert config.data == os.environ.get('BLOCKDROP_SHARED', '../shared') + '/data/cifar10'  # ${BLOCKDROP_SHARED}
    assert parse_set(['gamma=5', 'decay_epochs=[10, 20]', 'image_column=img']) == {
        'gamma': 5, 'decay_epochs': [10, 20], 'image_column': 'img'}
    assert config.per_device_batch_size(2) == 1024
    with pytest.raises(ValueError, match='not divisible by 3 processes'):
        config.per_device_batch_size(3)
    path = tmp_path / 'c.yaml'
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert load_config(path) == config  # a resolved config loads back to the same config


@pytest.mark.parametrize('overrides, match', [
    ({'epoch': 3}, r"unknown config key 'epoch' \(did you mean 'epochs'\?\) on the command line"),
    ({'epochs': 'many'}, "config key 'epochs' must be an integer"),
    ({'epochs': 2.5}, "config key 'epochs' must be an integer"),
    ({'streaming': 'yes'}, "'streaming' must be true or false"),
    ({'alpha': 0.5}, r'alpha must lie in \(0.5, 1\]'),
    ({'alpha': 1.2}, r'alpha must lie in \(0.5, 1\]'),
    ({'gamma': -5}, 'gamma is the penalty of a wrong prediction'),
    ({'stage': 'pretrain'}, "'stage' must be one of curriculum, finetune"),
    ({'batch_size': 0}, "'batch_size' must be > 0"),
    ({'lr_schedule': 'constant'}, "'lr_schedule' must be one of cosine, step"),
    ({'init_from': 'x'}, "'init_from' is for stage finetune"),
])
def test_bad_config_values(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(CL_CONFIG, overrides)


def test_bad_config_files(tmp_path):
    with pytest.raises(FileNotFoundError, match='config file not found'):
        load_config(tmp_path / 'missing.yaml')
    (tmp_path / 'list.yaml').write_text('- 1\n- 2\n')
    with pytest.raises(ValueError, match='must be a mapping'):
        load_config(tmp_path / 'list.yaml')
    (tmp_path / 'typo.yaml').write_text('stage: curriculum\nepochz: 3\n')
    with pytest.raises(ValueError, match=r"unknown config key 'epochz' \(did you mean 'epochs'\?\) in .*typo.yaml"):
        load_config(tmp_path / 'typo.yaml')
    assert set(TrainConfig().to_dict()) >= {'alpha', 'gamma', 'beta', 'cl_step'} and STAGES == ('curriculum',
                                                                                                 'finetune')


def test_lr_schedules_decay():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    cosine = lr_scheduler(opt, TrainConfig(lr=1e-3, min_lr=1e-5, epochs=10, warmup_epochs=1), steps_per_epoch=10)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]['lr'])
        opt.step()
        cosine.step()
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)     # linear warmup over epoch 1
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] < 2e-5   # then decays to min_lr
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    step = lr_scheduler(opt2, TrainConfig(lr=1e-4, lr_schedule='step', decay_epochs=[2], epochs=3), 5)
    seen = []
    for _ in range(15):
        seen.append(opt2.param_groups[0]['lr'])
        opt2.step()
        step.step()
    assert seen[:10] == [pytest.approx(1e-4)] * 10 and seen[10:] == [pytest.approx(1e-5)] * 5


def test_policy_stats_by_hand():
    stats = PolicyStats()
    stats.update(torch.tensor([[1, 1, 0], [1, 0, 0]]), torch.tensor([True, False]), torch.tensor([0.5, -1.0]),
                 torch.tensor(2.0))
    other = PolicyStats()
    other.update(torch.tensor([[1, 1, 0], [1, 1, 1]]), torch.tensor([True, True]), torch.tensor([0.5, 0.0]))
    s = PolicyStats.from_state_dict(json.loads(json.dumps(stats.state_dict()))).merge(other).summary('train')
    assert s['train_images'] == 4 and s['train_accuracy'] == 75.0 and s['train_reward'] == 0.0
    assert s['train_blocks_mean'] == 2.0 and s['train_blocks_std'] == pytest.approx((0.5) ** 0.5)
    assert s['train_unique_policies'] == 3 and s['train_loss'] == 2.0


def test_seeded_augmentation_depends_on_sample_and_epoch_only(shared):
    from timm_blockdrop.data import SampleSeeds, load_split, train_transform, with_index, with_seeded_transform
    seeds = SampleSeeds(0)
    ds = with_seeded_transform(with_index(load_split(str(CIFAR10), 'test').select(range(8))),
                               train_transform(timm.create_model('cifar_resnet20')), 'img', 'label', seeds)
    a = ds[[0, 1, 2, 3]]
    b = ds[[3, 2]]
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(a['pixel_values'][3], b['pixel_values'][0]) and a['seed'][2] == b['seed'][1]
    seeds.set_epoch(1)
    c = ds[[0, 1, 2, 3]]
    assert c['seed'] != a['seed']
    assert sum(not torch.equal(x, y) for x, y in zip(a['pixel_values'], c['pixel_values'])) >= 2


def test_train_throughput_is_measured():
    from timm_blockdrop.tools.train_bench import measure_train_throughput
    r = measure_train_throughput('cifar_resnet20', batch_size=8, steps=1, warmup=0, rounds=1)
    assert r['model'] == 'blockdrop_cifar_resnet20' and r['num_blocks'] == 9
    assert min(r['plain_ips'], r['curriculum_ips'], r['finetune_ips']) > 0
    assert r['curriculum_ratio'] == pytest.approx(r['curriculum_ips'] / r['plain_ips'])


# ---- the recipes, end to end ----

def test_curriculum_run_writes_metrics_and_a_loadable_checkpoint(cl_run):
    out, log = cl_run
    records = _lines(out / 'metrics.jsonl')
    assert [r['epoch'] for r in records] == [0, 1, 2]
    # before training, epoch 1's curriculum: only the last block is decided, by a fresh policy (s ~ 0.5)
    assert records[0]['val_images'] == N_EVAL and 14 <= records[0]['val_blocks_mean'] <= 15
    for r in records[1:]:
        assert EPOCH_KEYS <= set(r) and r['train_images'] == N_TRAIN and r['val_images'] == N_EVAL
        assert r['images_per_s'] > 0 and 0 <= r['val_accuracy'] <= 100
    assert [r['decided_blocks'] for r in records[1:]] == [1, 2]  # the curriculum: last 1, then last 2 blocks
    assert records[1]['train_blocks_mean'] >= 14 and records[2]['train_blocks_mean'] >= 13
    assert records[2]['lr'] < records[1]['lr']  # cosine decay
    steps = _lines(out / 'steps.jsonl')
    assert [s['step'] for s in steps] == list(range(1, EPOCHS * N_TRAIN // BATCH + 1))
    assert load_config(out / 'config.yaml').max_train_samples == N_TRAIN
    assert '1 process(es) on cpu' in log
    model = timm.create_model(f"local-dir:{out / 'model'}", pretrained=True)
    assert type(model).__name__ == 'BlockDropResNet' and model.num_blocks == 15
    # the frozen ResNet is the pretrained one, unchanged
    base = timm.create_model('cifar_resnet32', pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(RESNET_FILES[32])))
    assert all(torch.equal(a, b) for a, b in zip(model.base.state_dict().values(), base.state_dict().values()))
    checkpoints = checkpoint_dirs(out)
    assert len(checkpoints) == 2 and (checkpoints[-1] / 'model.safetensors').is_file()


def test_finetune_run_and_blockdrop_eval_agree(ft_run, tmp_path):
    out, log = ft_run
    (record,) = _lines(out / 'metrics.jsonl')  # one epoch (no evaluation before training)
    assert EPOCH_KEYS <= set(record) and record['train_images'] == N_TRAIN
    steps = _lines(out / 'steps.jsonl')
    assert all(s['loss'] == pytest.approx(s['pg_loss'] + s['ce_loss'], rel=1e-4, abs=1e-4) for s in steps)
    report = tmp_path / 'eval.json'
    assert blockdrop_main(['eval', '--checkpoint', str(out / 'model'), '--data', str(CIFAR10), '--split', VAL_ROWS,
                           '--max-samples', str(N_EVAL), '--batch-size', '64', '--quiet', '--json', str(report)]) == 0
    r = json.loads(report.read_text())
    assert r['n_images'] == N_EVAL and r['top1'] == pytest.approx(record['val_accuracy'])
    assert r['blocks_mean'] == pytest.approx(record['val_blocks_mean'])
    assert r['unique_policies'] == record['val_unique_policies']
    base = timm.create_model('cifar_resnet32', pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(RESNET_FILES[32])))
    model = timm.create_model(f"local-dir:{out / 'model'}", pretrained=True)
    assert not all(torch.equal(a, b) for a, b in zip(model.base.state_dict().values(), base.state_dict().values()))


def test_two_processes_evaluate_exactly_and_train_alike(cl_run, tmp_path):
    one, _ = cl_run
    two = tmp_path / 'two'
    launcher = [str(Path(sys.executable).parent / 'accelerate'), 'launch', '--multi_gpu', '--num_processes', '2',
                '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no',
                '--main_process_port', str(_free_port())]
    log = _recipe('curriculum', '--config', CL_CONFIG, '--output-dir', two, *RUN_ARGS, '--epochs', '1',
                  launcher=launcher)
    assert '2 process(es) on cpu' in log and 'MULTI_CPU' in log
    assert {p.name for p in checkpoint_dirs(two)[-1].glob('stats_*.json')} == {'stats_0.json', 'stats_1.json'}
    start_1, start_2 = _lines(one / 'metrics.jsonl')[0], _lines(two / 'metrics.jsonl')[0]
    assert start_2 == start_1 and start_2['val_images'] == N_EVAL  # every test image counted once, same numbers
    epoch_1, epoch_2 = _lines(one / 'metrics.jsonl')[1], _lines(two / 'metrics.jsonl')[1]
    assert epoch_2['train_images'] == N_TRAIN and epoch_2['val_images'] == N_EVAL
    losses_1 = [s['loss'] for s in _lines(one / 'steps.jsonl')[:4]]
    losses_2 = [s['loss'] for s in _lines(two / 'steps.jsonl')[:4]]
    assert losses_2 == pytest.approx(losses_1, abs=LOSS_TOLERANCE)
    assert _lines(two / 'steps.jsonl')[0]['reward'] == pytest.approx(_lines(one / 'steps.jsonl')[0]['reward'],
                                                                        abs=0.02)


def test_two_process_finetune_evaluates_exactly(cl_run, ft_run, tmp_path):
    """Joint finetuning under DDP: the same evaluation before training; the cross-entropy of the first steps tracks
    the 1-process run within CE_TOLERANCE (the ResNet trains in train mode, so BatchNorm normalises 16 rows per
    process instead of 32; the policy-gradient term flips with any prediction that changes and is not compared)."""
    two = tmp_path / 'two_ft'
    launcher = [str(Path(sys.executable).parent / 'accelerate'), 'launch', '--multi_gpu', '--num_processes', '2',
                '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no',
                '--main_process_port', str(_free_port())]
    one = tmp_path / 'one_ft'
    args = ['--config', FT_CONFIG, '--init-from', cl_run[0], *RUN_ARGS, '--epochs', '1', '--max-train-samples', '128']
    _recipe('finetune', *args, '--output-dir', one)
    log = _recipe('finetune', *args, '--output-dir', two, launcher=launcher)
    assert '2 process(es) on cpu' in log
    assert _lines(two / 'metrics.jsonl')[0] == _lines(one / 'metrics.jsonl')[0]  # evaluation before training
    ce_1 = [s['ce_loss'] for s in _lines(one / 'steps.jsonl')]
    ce_2 = [s['ce_loss'] for s in _lines(two / 'steps.jsonl')]
    assert len(ce_1) == len(ce_2) == 4 and ce_2 == pytest.approx(ce_1, abs=CE_TOLERANCE)
    # the final metrics the 2-process run logged are those of the model it saved (issue 13 item 4: every process
    # evaluates and saves the main process's BatchNorm statistics, not those of its own last batch)
    final = _lines(two / 'metrics.jsonl')[-1]
    report = tmp_path / 'eval.json'
    assert blockdrop_main(['eval', '--checkpoint', str(two / 'model'), '--data', str(CIFAR10), '--split', VAL_ROWS,
                           '--max-samples', str(N_EVAL), '--batch-size', '64', '--quiet', '--json', str(report)]) == 0
    r = json.loads(report.read_text())
    assert (r['top1'], r['unique_policies']) == (pytest.approx(final['val_accuracy']), final['val_unique_policies'])
    assert r['blocks_mean'] == pytest.approx(final['val_blocks_mean'])


def test_kill_during_an_epoch_then_resume_latest(cl_run, tmp_path):
    """kill -9 mid-epoch; --resume-from latest loses at most one checkpoint interval and ends as if never killed."""
    reference, _ = cl_run
    out = tmp_path / 'killed'
    proc = _recipe('curriculum', '--config', CL_CONFIG, '--output-dir', out, *RUN_ARGS, wait=False)
    steps_file, kill_at = out / 'steps.jsonl', N_TRAIN // BATCH + 3  # 3 steps into the second epoch
    deadline = time.monotonic() + 300
    while not (steps_file.is_file() and len(steps_file.read_text().splitlines()) >= kill_at):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    last_step = _lines(steps_file)[-1]['step']
    assert last_step < EPOCHS * N_TRAIN // BATCH, 'the run finished before it could be killed'
    latest = checkpoint_dirs(out)[-1]
    progress = json.loads((latest / 'progress.json').read_text())
    assert last_step - progress['step'] <= CKPT_EVERY  # at most one checkpoint interval lost
    assert progress['epoch'] == 1 and progress['batch'] > 0  # a checkpoint taken during the epoch
    assert not (out / 'model').exists()
    log = _recipe('curriculum', '--config', CL_CONFIG, '--output-dir', out, *RUN_ARGS, '--resume-from', 'latest')
    assert f"resumed from {latest}: epoch 1, batch {progress['batch']}, step {progress['step']}" in log
    assert _without_timing(_lines(out / 'metrics.jsonl')) == _without_timing(_lines(reference / 'metrics.jsonl'))
    assert _lines(out / 'steps.jsonl') == _lines(reference / 'steps.jsonl')
    a = timm.create_model(f"local-dir:{out / 'model'}", pretrained=True).state_dict()
    b = timm.create_model(f"local-dir:{reference / 'model'}", pretrained=True).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---- bad input: exit status 2 and a one-line error ----

def _load_recipe(name):
    spec = importlib.util.spec_from_file_location(f'recipe_{name}', REPO / 'recipes' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fails(capsys, name, *args):
    code = _load_recipe(name).main([*map(str, args)])
    err = capsys.readouterr().err
    assert code == 2, err
    return err


def test_bad_input_is_a_clear_error(capsys, tmp_path, shared):
    base = ['--config', CL_CONFIG, '--output-dir', tmp_path / 'out', '--max-train-samples', '64',
            '--max-eval-samples', '64', '--batch-size', '32', '--set', 'num_workers=0']
    assert 'config file not found' in _fails(capsys, 'curriculum', '--config', tmp_path / 'none.yaml')
    (tmp_path / 'bad.yaml').write_text(CL_CONFIG.read_text() + 'entropy_weight: 0.1\n')
    assert "unknown config key 'entropy_weight'" in _fails(capsys, 'curriculum', '--config', tmp_path / 'bad.yaml')
    assert "no image column 'image'" in _fails(capsys, 'curriculum', *base, '--set', 'image_column=image')
    assert "no label column 'fine_label'" in _fails(capsys, 'curriculum', *base, '--set', 'label_column=fine_label')
    err = _fails(capsys, 'curriculum', *base, '--set', f'pretrained_file={RESNET_FILES[56]}')
    assert "does not fit architecture 'cifar_resnet32'" in err
    (tmp_path / 'empty').mkdir()
    assert 'no training state' in _fails(capsys, 'curriculum', *base, '--resume-from', tmp_path / 'empty')
    assert 'no checkpoint' in _fails(capsys, 'curriculum', *base, '--resume-from', 'latest')
    assert 'alpha must lie in (0.5, 1]' in _fails(capsys, 'curriculum', *base, '--set', 'alpha=0.5')
    assert 'gamma is the penalty' in _fails(capsys, 'curriculum', *base, '--set', 'gamma=-5')
    assert 'gamma is the penalty' in _fails(capsys, 'finetune', '--config', FT_CONFIG, '--set', 'gamma=-1')
    assert 'run it with recipes/finetune.py' in _fails(capsys, 'curriculum', '--config', FT_CONFIG)
    assert '--init-from' in _fails(capsys, 'finetune', '--config', FT_CONFIG, '--init-from', tmp_path / 'empty')


def test_a_fresh_run_does_not_overwrite_another_runs_checkpoints(capsys, cl_run):
    err = _fails(capsys, 'curriculum', '--config', CL_CONFIG, '--output-dir', cl_run[0], *RUN_ARGS)
    assert 'already holds checkpoints' in err and '--resume-from latest' in err


def test_policy_lr_is_a_separate_group_on_the_same_schedule():
    """finetune policy_lr: the policy network's Adam group at policy_lr, the ResNet's at lr, both decayed alike."""
    from timm_blockdrop.train.build import finetune_param_groups
    model = timm_blockdrop_wrap_resnet20()
    config = load_config(FT_CONFIG, {'lr': 1e-4, 'policy_lr': 1e-6, 'lr_schedule': 'step', 'decay_epochs': [1],
                                     'epochs': 2, 'init_from': None})
    groups = finetune_param_groups(model, config)
    assert [g['lr'] for g in groups] == [1e-4, 1e-6]
    policy_ids = {id(p) for p in model.policy.parameters()}
    assert {id(p) for p in groups[1]['params']} == policy_ids
    assert {id(p) for p in groups[0]['params']} == {id(p) for p in model.parameters()} - policy_ids
    opt = torch.optim.Adam(groups, lr=config.lr)
    sched = lr_scheduler(opt, config, steps_per_epoch=2)
    seen = []
    for _ in range(4):
        seen.append([g['lr'] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert seen == [[pytest.approx(1e-4), pytest.approx(1e-6)]] * 2 + [[pytest.approx(1e-5), pytest.approx(1e-7)]] * 2
    same = finetune_param_groups(model, load_config(FT_CONFIG, {'lr': 1e-4, 'init_from': None}))
    assert [g['lr'] for g in same] == [1e-4, 1e-4]  # policy_lr unset: one learning rate, as the reference


@pytest.mark.parametrize('overrides, match', [
    ({'policy_lr': 1e-5}, "'policy_lr' is for stage finetune"),
    ({'distill_weight': 1.0}, "'distill_weight' is for stage finetune"),
])
def test_finetune_only_keys_are_refused_in_the_curriculum(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(CL_CONFIG, overrides)


@pytest.mark.parametrize('overrides, match', [
    ({'policy_lr': 0}, "'policy_lr' must be > 0"),
    ({'distill_weight': -1}, "'distill_weight' must be >= 0"),
    ({'distill_temperature': 0}, "'distill_temperature' must be > 0"),
])
def test_bad_finetune_values(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(FT_CONFIG, overrides)


def timm_blockdrop_wrap_resnet20():
    import timm_blockdrop
    base = timm.create_model('cifar_resnet20', pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(RESNET_FILES[20])))
    return timm_blockdrop.wrap(base)


def test_finetune_run_with_policy_lr_and_distillation(cl_run, tmp_path):
    out = tmp_path / 'kd'
    _recipe('finetune', '--config', FT_CONFIG, '--init-from', cl_run[0], '--output-dir', out, *RUN_ARGS[:-2],
            '--epochs', '1', '--set', 'policy_lr=1e-6', '--set', 'distill_weight=0.5', '--set', 'exec_mode=routed')
    steps = _lines(out / 'steps.jsonl')
    assert steps and all(s['policy_lr'] == pytest.approx(1e-6) and s['lr'] == pytest.approx(1e-4) for s in steps)
    assert all(s['loss'] == pytest.approx(s['pg_loss'] + s['ce_loss'] + 0.5 * s['kd_loss'], rel=1e-4, abs=1e-4)
               for s in steps)
    (record,) = _lines(out / 'metrics.jsonl')
    assert record['policy_lr'] == pytest.approx(1e-6) and EPOCH_KEYS <= set(record)
    config = yaml.safe_load((out / 'config.yaml').read_text())
    assert config['policy_lr'] == 1e-6 and config['distill_weight'] == 0.5


def test_policy_init_keep_starts_the_policy_near_keep_all(cifar_test_slice):
    from timm_blockdrop.train.build import init_policy_keep
    torch.manual_seed(0)
    model = timm_blockdrop_wrap_resnet20().eval()
    images = cifar_test_slice[0][:64]
    with torch.no_grad():
        fresh = model.policy_probs(images).mean().item()
        init_policy_keep(model, 0.95)
        started = model.policy_probs(images)
    assert 0.2 < fresh < 0.8 and started.mean().item() > 0.9
    assert model.policy.get_classifier().bias.detach().allclose(torch.full((9,), math.log(0.95 / 0.05)))
    assert load_config(CL_CONFIG, {'policy_init_keep': 0.9}).policy_init_keep == 0.9
    with pytest.raises(ValueError, match=r"'policy_init_keep' must lie in \(0, 1\)"):
        load_config(CL_CONFIG, {'policy_init_keep': 1.0})
    with pytest.raises(ValueError, match="'policy_init_keep' is for stage curriculum"):
        load_config(FT_CONFIG, {'policy_init_keep': 0.9})


def test_robust_range_stage_runs_from_its_config(tmp_path):
    """The ResNet-56 robust-base stage as shipped (a fixed RandomK with k in 9-17 per image, from the shared weights,
    the full ResNet-56 teaching): every image runs 9-17 blocks, depths vary, and with no policy network to train the
    run does not warn about a fresh policy."""
    out = tmp_path / 'rr56'
    log = _recipe('finetune', '--config', CONFIGS / 'cifar10_resnet56_robust_range_ft.yaml', '--output-dir', out,
                  *RUN_ARGS[:-2], '--epochs', '1', '--set', f'pretrained_file={RESNET_FILES[56]}',
                  '--set', f'teacher_file={RESNET_FILES[56]}')
    assert 'fresh policy' not in log
    record = _lines(out / 'metrics.jsonl')[-1]  # (after epoch 0's evaluation: the config evaluates at start)
    assert 9 <= record['train_blocks_mean'] <= 17 and 9 <= record['val_blocks_mean'] <= 17
    assert record['val_blocks_std'] > 1 and record['val_unique_policies'] > 100
    assert all(s['pg_loss'] == 0 and s['kd_loss'] > 0 for s in _lines(out / 'steps.jsonl'))


def test_fixed_policy_finetune_run(cl_run, tmp_path):
    """fixed_policy: a Table 1 (ft) baseline run; its val numbers are those of blockdrop eval --policy on its model."""
    out = tmp_path / 'dk'
    _recipe('finetune', '--config', FT_CONFIG, '--init-from', cl_run[0], '--output-dir', out, *RUN_ARGS[:-2],
            '--epochs', '1', '--set', 'fixed_policy=distributek', '--set', 'fixed_blocks=7')
    (record,) = _lines(out / 'metrics.jsonl')
    assert record['train_blocks_mean'] == 7 and record['val_blocks_mean'] == 7 and record['val_unique_policies'] == 1
    assert all(s['pg_loss'] == 0 for s in _lines(out / 'steps.jsonl'))
    report = tmp_path / 'eval.json'
    assert blockdrop_main(['eval', '--checkpoint', str(out / 'model'), '--data', str(CIFAR10), '--split', VAL_ROWS,
                           '--max-samples', str(N_EVAL), '--batch-size', '64', '--policy', 'distributek', '--blocks', '7',
                           '--quiet', '--json', str(report)]) == 0
    assert json.loads(report.read_text())['top1'] == pytest.approx(record['val_accuracy'])
    with pytest.raises(ValueError, match="'fixed_policy' \\(firstk\\) needs 'fixed_blocks'"):
        load_config(FT_CONFIG, {'fixed_policy': 'firstk'})
    with pytest.raises(ValueError, match="'fixed_blocks' is the k of 'fixed_policy'"):
        load_config(FT_CONFIG, {'fixed_blocks': 7})
    with pytest.raises(ValueError, match="'fixed_policy' must be one of"):
        load_config(FT_CONFIG, {'fixed_policy': 'lastk', 'fixed_blocks': 7})
    with pytest.raises(ValueError, match="'fixed_policy' is for stage finetune"):
        load_config(CL_CONFIG, {'fixed_policy': 'firstk', 'fixed_blocks': 7})
    assert load_config(FT_CONFIG, {'fixed_policy': 'randomk', 'fixed_blocks': 4,
                                   'fixed_blocks_max': 10}).fixed_blocks_max == 10
    with pytest.raises(ValueError, match="'fixed_blocks_max' draws each image's k for fixed_policy 'randomk', but "
                                         "fixed_policy is 'distributek'"):
        load_config(FT_CONFIG, {'fixed_policy': 'distributek', 'fixed_blocks': 4, 'fixed_blocks_max': 10})
    with pytest.raises(ValueError, match=r"'fixed_blocks_max' \(3\) must not be below 'fixed_blocks' \(4\)"):
        load_config(FT_CONFIG, {'fixed_policy': 'randomk', 'fixed_blocks': 4, 'fixed_blocks_max': 3})


def test_policy_init_from_base_copies_matching_layers():
    from timm_blockdrop.train.build import init_policy_from_base
    torch.manual_seed(0)
    model = timm_blockdrop_wrap_resnet20()
    fc_before = model.policy.get_classifier().weight.detach().clone()
    copied = init_policy_from_base(model)
    base, policy = model.base.state_dict(), model.policy.state_dict()
    assert 'conv1.weight' in copied and 'layer3.0.conv2.weight' in copied and 'bn1.running_mean' in copied
    assert all(torch.equal(policy[k], base[k]) for k in copied)
    assert not any(k.startswith('fc.') for k in copied)  # 9 outputs vs 10 classes: stays fresh
    assert torch.equal(model.policy.get_classifier().weight, fc_before)
    with pytest.raises(ValueError, match="'policy_init_from_base' is for stage curriculum"):
        load_config(FT_CONFIG, {'policy_init_from_base': True})


# ---- channels_last (issue 11 item 5): a layout, not a different model ----

CHANNELS_LAST_TOLERANCE = 1.0  # val_accuracy (%, absolute; blocks 0.1, reward 0.05): the layouts sum the
# convolutions in another order (~1e-6 relative on logits), which may flip an argmax or a policy decision near the
# threshold for one or two of the 200 images (each flip of a prediction moves the accuracy by 0.5 points)


def test_channels_last_run_matches_nchw(cl_run, tmp_path):
    out = tmp_path / 'run'
    _recipe('curriculum', '--config', CL_CONFIG, '--output-dir', out, *RUN_ARGS, '--set', 'channels_last=true')
    nchw, cl = _lines(cl_run[0] / 'metrics.jsonl'), _lines(out / 'metrics.jsonl')
    assert [r['epoch'] for r in cl] == [r['epoch'] for r in nchw] == [0, 1, 2]
    for a, b in zip(nchw, cl):
        assert b['val_accuracy'] == pytest.approx(a['val_accuracy'], abs=CHANNELS_LAST_TOLERANCE)
        assert b['val_blocks_mean'] == pytest.approx(a['val_blocks_mean'], abs=0.1)
        assert b['val_reward'] == pytest.approx(a['val_reward'], abs=0.05)
    assert yaml.safe_load((out / 'config.yaml').read_text())['channels_last'] is True
    loaded = timm.create_model(f'local-dir:{out / "model"}')  # saved contiguous (safetensors), loads as usual
    assert loaded.num_blocks == 15


def _prepared_channels_last_run(tmp_path, **overrides):
    """A prepared (not started) curriculum run in channels_last on 64 CIFAR-10 images: its model and TrainingRun.
    The caller releases ``run.lock``."""
    from accelerate import Accelerator
    from timm_blockdrop.train.build import build_model
    from timm_blockdrop.train.reinforce import CurriculumRollout
    from timm_blockdrop.train.session import accelerator_options, prepare
    config = load_config(CL_CONFIG, dict(
        data=str(CIFAR10), output_dir=str(tmp_path / 'run'), channels_last=True, **overrides,
        max_train_samples=64, max_eval_samples=8, batch_size=32, eval_batch_size=8, num_workers=0))
    model = build_model(config)
    return model, prepare(config, Accelerator(**accelerator_options(config, cpu=True)), CurriculumRollout(model),
                          torch.optim.Adam(model.policy.parameters()))


def test_channels_last_puts_model_and_batches_in_that_layout(tmp_path, shared):
    model, run = _prepared_channels_last_run(tmp_path)
    try:
        convs = [p for p in model.parameters() if p.dim() == 4]
        assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
        assert not all(p.is_contiguous() for p in convs)  # (a 1x1 or C=1 weight is both)
        images = next(iter(run.batches(0)))['pixel_values']
        assert images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
    finally:
        run._bar.close()
        run.lock.release()


# ---- best_metric: model_best/, the evaluated epoch highest on val (timm train.py's model_best) ----

def test_best_metric_saves_the_best_evaluated_epoch_only(tmp_path, shared):
    model, run = _prepared_channels_last_run(tmp_path, best_metric='val_accuracy')
    best_dir = tmp_path / 'run' / 'model_best'
    name, weight = next((k, p) for k, p in model.named_parameters() if k.startswith('policy.'))

    def saved():
        return timm.create_model(f'local-dir:{best_dir}', pretrained=True).state_dict()[name]

    try:
        history = []
        for epoch, accuracy in enumerate([50.0, 40.0, 60.0, 60.0, 10.0]):
            with torch.no_grad():
                weight.fill_(float(epoch))  # each epoch's model told apart by one tensor
            record = dict(epoch=epoch, val_accuracy=accuracy)
            run._keep_if_best(record)
            history.append(record.get('best', False))
            expected = {0: 0, 1: 0, 2: 2, 3: 2, 4: 2}[epoch]  # a tie keeps the earlier epoch
            assert run.progress.best == dict(epoch=expected, metric='val_accuracy', value=[50.0, 60.0][expected > 0])
            assert torch.all(saved() == expected)
        assert history == [True, False, True, False, False]
        run._keep_if_best(dict(epoch=5))  # an epoch without evaluation
        assert run.progress.best['epoch'] == 2
        # saving copied the model: the one in training keeps its layout
        convs = [p for p in model.parameters() if p.dim() == 4]
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
        assert not all(p.is_contiguous() for p in convs)
    finally:
        run.lock.release()


def test_finetune_with_best_metric_keeps_model_best_as_blockdrop_eval_sees_it(cl_run, tmp_path):
    out = tmp_path / 'best'
    log = _recipe('finetune', '--config', FT_CONFIG, '--init-from', cl_run[0], '--output-dir', out, *RUN_ARGS,
                  '--epochs', '1', '--set', 'best_metric=val_accuracy', '--set', 'channels_last=true')
    records = _lines(out / 'metrics.jsonl')
    assert [r['epoch'] for r in records] == [0, 1] and records[0]['best']
    best = max(records, key=lambda r: (r['val_accuracy'], -r['epoch']))
    assert [r.get('best', False) for r in records] == [True, records[1]['val_accuracy'] > records[0]['val_accuracy']]
    assert f"model_best/ is epoch {best['epoch']}" in log
    progress = json.loads((checkpoint_dirs(out)[-1] / 'progress.json').read_text())
    assert progress['best'] == dict(epoch=best['epoch'], metric='val_accuracy', value=best['val_accuracy'])
    report = tmp_path / 'eval.json'
    assert blockdrop_main(['eval', '--checkpoint', str(out / 'model_best'), '--data', str(CIFAR10), '--split',
                           VAL_ROWS, '--max-samples', str(N_EVAL), '--batch-size', '64', '--quiet', '--json',
                           str(report)]) == 0
    r = json.loads(report.read_text())
    assert r['top1'] == pytest.approx(best['val_accuracy'])
    assert r['blocks_mean'] == pytest.approx(best['val_blocks_mean'])

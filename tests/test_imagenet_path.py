"""The ImageNet path at tiny scale (issue 14), offline, on an ImageNet-shaped dataset the test writes itself
(``tiny_data.write_imagenet_parquet`` / ``write_imagenet_folder``: ``image`` / ``label`` columns as
ILSVRC/imagenet-1k, JPEGs of varied sizes and aspect ratios, grayscale, CMYK and an RGBA PNG, 1000 classes).

The shipped configs ``recipes/configs/imagenet_resnet101_{cl,ft}.yaml`` run as they are, changing only the data,
the base (``resnet18`` with random weights: ``--set model=resnet18 --set base_pretrained=false``) and the sizes:

- streaming from parquet shards (as the configs stream the Hub's), bf16 autocast on the CPU as the configs ask:
  curriculum (2 epochs), finetune from it, ``blockdrop eval`` of the result;
- map-style from an image folder, fp32: curriculum, finetune, ``blockdrop eval`` agreeing with the run's own
  validation numbers;
- ``kill -9`` during the second epoch of the streaming curriculum, then ``--resume-from latest``: the same samples
  (steps.jsonl, line for line) and the same metrics and weights as the uninterrupted run;
- two "machines" over loopback (``accelerate launch --num_machines 2 --machine_rank R --main_process_ip 127.0.0.1``,
  one process each, gloo) give exactly what one machine with 2 processes gives;
- the base's weights: the config names the tag; offline without it one sentence names the repo and the
  ``hf download`` command; ``pretrained_file`` takes a local file;
- mixed precision: the policy's probabilities and the REINFORCE terms are float32 under bf16 autocast.
"""
import json
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
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from huggingface_hub import constants as hf_constants
from safetensors.torch import save_file

from timm_blockdrop.models.blockdrop import wrap
from timm_blockdrop.models.policies import bounded
from timm_blockdrop.models.policy_net import policy_input
from timm_blockdrop.tools.cli import main as blockdrop_main
from timm_blockdrop.train.build import build_model
from timm_blockdrop.train.checkpointing import checkpoint_dirs
from timm_blockdrop.train.config import load_config
from timm_blockdrop.train.reinforce import CurriculumRollout, curriculum_loss, policy_gradient_loss, rewards

from test_recipes import _free_port, _lines, _without_timing

from conftest import REPO
from tiny_data import write_imagenet_folder, write_imagenet_parquet

CL_CONFIG = REPO / 'recipes' / 'configs' / 'imagenet_resnet101_cl.yaml'
FT_CONFIG = REPO / 'recipes' / 'configs' / 'imagenet_resnet101_ft.yaml'
N_TRAIN, N_VAL, BATCH = 16, 8, 4  # 4 steps per epoch
# only the data, the base and the sizes change; checkpoints at epoch ends (the killed run adds more)
SIZES = ['--set', 'model=resnet18', '--set', 'base_pretrained=false', '--batch-size', str(BATCH),
         '--max-train-samples', str(N_TRAIN), '--max-eval-samples', str(N_VAL), '--set', 'eval_batch_size=4',
         '--set', 'num_workers=0', '--set', 'shuffle_buffer=8', '--set', 'log_every_steps=1',
         '--set', 'checkpoint_every_steps=1000', '--set', 'warmup_epochs=0']


def _env(cache):
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1',
               HF_DATASETS_CACHE=str(cache), TOKENIZERS_PARALLELISM='false')
    env.pop('ACCELERATE_CONFIG_FILE', None)
    return env


def _command(name, args, launcher=()):
    script = [str(REPO / 'recipes' / f'{name}.py'), *map(str, args)]
    return [*launcher, *script] if launcher else [sys.executable, *script]


def _run(cache, name, *args, launcher=()):
    done = subprocess.run(_command(name, args, launcher), cwd=REPO, env=_env(cache), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _weights(folder):
    return timm.create_model(f'local-dir:{folder}', pretrained=True).state_dict()


def _same_weights(a, b):
    a, b = _weights(a), _weights(b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('imagenet_like')
    return dict(parquet=write_imagenet_parquet(root / 'parquet', N_TRAIN, N_VAL, shards=2),
                folder=write_imagenet_folder(root / 'folder', N_TRAIN, N_VAL), cache=root / 'hf-datasets-cache')


@pytest.fixture(scope='module')
def streaming_runs(tmp_path_factory, data):
    """The streaming pipeline (parquet shards, bf16 as the configs): curriculum 2 epochs, then finetune 1."""
    root = tmp_path_factory.mktemp('streaming')
    cl_log = _run(data['cache'], 'curriculum', '--config', CL_CONFIG, '--data', data['parquet'],
                  '--output-dir', root / 'cl', '--epochs', 2, *SIZES)
    ft_log = _run(data['cache'], 'finetune', '--config', FT_CONFIG, '--data', data['parquet'],
                  '--init-from', root / 'cl', '--output-dir', root / 'ft', '--epochs', 1, *SIZES)
    return root, cl_log, ft_log


@pytest.fixture(scope='module')
def map_runs(tmp_path_factory, data):
    """The map-style pipeline (image folder, fp32): curriculum, then finetune, 1 epoch each."""
    root = tmp_path_factory.mktemp('map')
    fp32 = ['--set', 'streaming=false', '--set', "mixed_precision='no'", '--epochs', 1]
    cl_log = _run(data['cache'], 'curriculum', '--config', CL_CONFIG, '--data', data['folder'],
                  '--output-dir', root / 'cl', *SIZES, *fp32)
    ft_log = _run(data['cache'], 'finetune', '--config', FT_CONFIG, '--data', data['folder'],
                  '--init-from', root / 'cl', '--output-dir', root / 'ft', *SIZES, *fp32)
    return root, cl_log, ft_log


def _check_run(out, epochs, stage):
    config = load_config(out / 'config.yaml')
    assert config.stage == stage and config.model == 'resnet18' and not config.base_pretrained
    records = _lines(out / 'metrics.jsonl')
    assert [r['epoch'] for r in records] == list(range(1, epochs + 1))
    for r in records:
        assert r['train_images'] == N_TRAIN and r['val_images'] == N_VAL
        assert 0 <= r['val_accuracy'] <= 100 and 0 <= r['train_blocks_mean'] <= 8
    assert [s['step'] for s in _lines(out / 'steps.jsonl')] == list(range(1, epochs * N_TRAIN // BATCH + 1))
    model = timm.create_model(f"local-dir:{out / 'model'}", pretrained=True)
    assert model._model_args['base_model'] == 'resnet18' and model.num_blocks == 8
    assert model.pretrained_cfg['input_size'] == (3, 224, 224) and model.policy_img_size == 112
    return config, records


def _eval(out, data, split, tmp_path):
    report = tmp_path / f'{out.parent.name}_eval.json'
    assert blockdrop_main(['eval', '--checkpoint', str(out / 'model'), '--data', str(data), '--split', split,
                           '--batch-size', '4', '--quiet', '--json', str(report)]) == 0
    return json.loads(report.read_text())


# ---- 1. the recipes end to end ----

def test_streaming_curriculum_finetune_eval_in_bf16(streaming_runs, data, tmp_path):
    root, cl_log, ft_log = streaming_runs
    config, records = _check_run(root / 'cl', 2, 'curriculum')
    assert config.streaming and config.mixed_precision == 'bf16' and config.shuffle_buffer == 8
    assert [r['decided_blocks'] for r in records] == [1, 2]  # the curriculum on ResNet-18's 8 blocks
    assert '1 process(es) on cpu' in cl_log
    config, (record,) = _check_run(root / 'ft', 1, 'finetune')
    assert config.streaming and config.mixed_precision == 'bf16'
    steps = _lines(root / 'ft' / 'steps.jsonl')
    assert all(torch.isfinite(torch.tensor([s['loss'], s['pg_loss'], s['ce_loss']])).all() for s in steps)
    report = _eval(root / 'ft', data['parquet'], 'validation', tmp_path)
    assert report['n_images'] == N_VAL and 0 <= report['top1'] <= 100 and 0 <= report['blocks_mean'] <= 8


def test_map_curriculum_finetune_eval_agree(map_runs, data, tmp_path):
    root, cl_log, ft_log = map_runs
    config, _ = _check_run(root / 'cl', 1, 'curriculum')
    assert not config.streaming and config.data == str(data['folder'])
    config, (record,) = _check_run(root / 'ft', 1, 'finetune')
    report = _eval(root / 'ft', data['folder'], 'validation', tmp_path)  # fp32 both: the same numbers
    assert report['n_images'] == N_VAL and report['top1'] == pytest.approx(record['val_accuracy'])
    assert report['blocks_mean'] == pytest.approx(record['val_blocks_mean'])
    assert report['unique_policies'] == record['val_unique_policies']


# ---- 2. resume in the middle of a streaming epoch ----

def _mid_epoch_checkpoint(out, epoch):
    """A complete checkpoint taken inside ``epoch`` (0-based, batch > 0), or None."""
    for folder in checkpoint_dirs(out):
        try:
            progress = json.loads((folder / 'progress.json').read_text())
        except (FileNotFoundError, json.JSONDecodeError):  # (rotated away meanwhile)
            continue
        if progress['epoch'] == epoch and progress['batch'] > 0:
            return folder, progress
    return None


def test_kill_during_a_streaming_epoch_then_resume_exactly(streaming_runs, data, tmp_path):
    """kill -9 in the second epoch of the streaming curriculum; --resume-from latest ends with the same steps
    (same samples: rewards and losses step for step), metrics and weights as the uninterrupted run."""
    reference = streaming_runs[0] / 'cl'
    out = tmp_path / 'killed'
    args = ['--config', CL_CONFIG, '--data', data['parquet'], '--output-dir', out, '--epochs', 2, *SIZES,
            '--set', 'checkpoint_every_steps=1']
    with open(tmp_path / 'killed.log', 'w') as log:
        proc = subprocess.Popen(_command('curriculum', args), cwd=REPO, env=_env(data['cache']), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 600
        while _mid_epoch_checkpoint(out, 1) is None:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / 'killed.log').read_text()[-3000:]
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / 'model').exists(), 'the run finished before it could be killed'
    latest = checkpoint_dirs(out)[-1]
    progress = json.loads((latest / 'progress.json').read_text())
    assert progress['epoch'] == 1 and 0 < progress['batch'] < N_TRAIN // BATCH
    log = _run(data['cache'], 'curriculum', *args, '--resume-from', 'latest')
    assert f"resumed from {latest}: epoch 1, batch {progress['batch']}, step {progress['step']}" in log
    assert _lines(out / 'steps.jsonl') == _lines(reference / 'steps.jsonl')
    assert _without_timing(_lines(out / 'metrics.jsonl')) == _without_timing(_lines(reference / 'metrics.jsonl'))
    assert _same_weights(out / 'model', reference / 'model')


# ---- 3. two machines over loopback = one machine with two processes ----

def test_two_machines_give_what_one_machine_with_two_processes_gives(data, tmp_path):
    accelerate = str(Path(sys.executable).parent / 'accelerate')
    launch = [accelerate, 'launch', '--multi_gpu', '--num_processes', '2', '--mixed_precision', 'bf16',
              '--dynamo_backend', 'no']
    args = ['--config', CL_CONFIG, '--data', data['parquet'], '--epochs', 1, *SIZES]
    one = tmp_path / 'one_machine'
    log = _run(data['cache'], 'curriculum', *args, '--output-dir', one,
               launcher=[*launch, '--num_machines', '1', '--main_process_port', str(_free_port())])
    assert '2 process(es) on cpu' in log and 'MULTI_CPU' in log
    two = tmp_path / 'two_machines'
    port = _free_port()
    logs = [open(tmp_path / f'machine_{rank}.log', 'w') for rank in (0, 1)]
    procs = [subprocess.Popen(_command('curriculum', [*args, '--output-dir', two], launcher=[
        *launch, '--num_machines', '2', '--machine_rank', str(rank), '--main_process_ip', '127.0.0.1',
        '--main_process_port', str(port)]), cwd=REPO, env=_env(data['cache']), stdout=logs[rank],
        stderr=subprocess.STDOUT, start_new_session=True) for rank in (0, 1)]
    try:
        codes = [p.wait(timeout=900) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        for f in logs:
            f.close()
    machine_0 = (tmp_path / 'machine_0.log').read_text()
    assert codes == [0, 0], machine_0[-3000:] + (tmp_path / 'machine_1.log').read_text()[-3000:]
    assert '2 process(es) on cpu' in machine_0 and 'MULTI_CPU' in machine_0
    assert {p.name for p in checkpoint_dirs(two)[-1].glob('stats_*.json')} == {'stats_0.json', 'stats_1.json'}
    assert _lines(two / 'steps.jsonl') == _lines(one / 'steps.jsonl')
    assert _without_timing(_lines(two / 'metrics.jsonl')) == _without_timing(_lines(one / 'metrics.jsonl'))
    assert _same_weights(two / 'model', one / 'model')


# ---- 4. mixed precision: probabilities and REINFORCE terms in float32 ----

def test_policy_probabilities_and_reinforce_terms_are_float32_under_bf16_autocast():
    torch.manual_seed(0)
    model = wrap(timm.create_model('resnet18'))
    rollout = CurriculumRollout(model).train()
    images, seeds, labels = torch.randn(2, 3, 224, 224), torch.tensor([3, 4]), torch.tensor([0, 1])
    with torch.autocast('cpu', dtype=torch.bfloat16):
        policy_logits = model.policy(policy_input(images, model.policy_img_size))
        out = rollout(images, seeds, 0)
        r, correct, adv = rewards(out, labels, gamma=5.0)
        cl_loss = curriculum_loss(out['probs'], out['keep'], adv, 0, beta=0.1)
        pg_loss = policy_gradient_loss(out['probs'], out['keep'], adv, weight=320)
    assert policy_logits.dtype == torch.bfloat16  # autocast does run the policy network in bf16
    for value in (out['probs'], r, adv, cl_loss, pg_loss):
        assert value.dtype == torch.float32
    # s' is the float32 sigmoid of those logits (Eq. 2), not a bf16 sigmoid widened afterwards
    assert torch.equal(out['probs'], bounded(torch.sigmoid(policy_logits.float()), model.alpha))
    cl_loss.backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in model.policy.parameters() if p.grad is not None)


# ---- 5. the base's weights ----

def test_the_imagenet_config_names_the_base_tag_and_offline_without_it_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, 'HF_HUB_CACHE', str(tmp_path / 'empty-hub-cache'))
    config = load_config(CL_CONFIG)
    assert config.model == 'resnet101.tv_in1k' and config.base_pretrained and config.pretrained_file is None
    repo = timm.models.get_pretrained_cfg(config.model).hf_hub_id
    with pytest.raises(FileNotFoundError) as error:
        build_model(config)
    message = str(error.value)
    assert '\n' not in message and f'Hub repo {repo} is not in the local cache' in message
    assert f'`hf download {repo}`' in message and '--set pretrained_file=PATH' in message
    assert '--set base_pretrained=false' in message


def _fake_hub_cache(cache, repo, state):
    """``cache`` holding ``repo``'s model.safetensors as ``hf download`` leaves it (refs/main -> a snapshot)."""
    folder = Path(cache) / f"models--{repo.replace('/', '--')}"
    (folder / 'refs').mkdir(parents=True)
    (folder / 'refs' / 'main').write_text('0' * 40)
    (folder / 'snapshots' / ('0' * 40)).mkdir(parents=True)
    save_file(state, str(folder / 'snapshots' / ('0' * 40) / 'model.safetensors'))


def test_the_base_tag_comes_from_the_hub_cache_or_a_local_file(tmp_path, monkeypatch):
    weights = {k: torch.randn_like(v) if v.is_floating_point() else v
               for k, v in timm.create_model('resnet18').state_dict().items()}
    # the tag in the Hub cache (offline): used
    monkeypatch.setattr(hf_constants, 'HF_HUB_CACHE', str(tmp_path / 'hub-cache'))
    _fake_hub_cache(tmp_path / 'hub-cache', timm.models.get_pretrained_cfg('resnet18.a1_in1k').hf_hub_id, weights)
    base = build_model(load_config(CL_CONFIG, {'model': 'resnet18.a1_in1k'})).base.state_dict()
    assert all(torch.equal(base[k], weights[k]) for k in weights)
    # pretrained_file: a local file for the base
    file = tmp_path / 'resnet18.safetensors'
    doubled = {k: v * 2 if v.is_floating_point() else v for k, v in weights.items()}
    save_file(doubled, str(file))
    base = build_model(load_config(CL_CONFIG, {'model': 'resnet18', 'pretrained_file': str(file)})).base.state_dict()
    assert all(torch.equal(base[k], doubled[k]) for k in weights)
    # base_pretrained: false: random weights, nothing read
    base = build_model(load_config(CL_CONFIG, {'model': 'resnet18.a1_in1k', 'base_pretrained': False})).base
    assert not torch.equal(base.conv1.weight, weights['conv1.weight'])
    with pytest.raises(ValueError, match="'pretrained_file' gives the base's weights but 'base_pretrained' is false"):
        load_config(CL_CONFIG, {'pretrained_file': str(file), 'base_pretrained': False})


def test_the_8_gpu_accelerate_config_is_one_accelerate_reads():
    config = load_config_from_file(str(REPO / 'recipes' / 'accelerate' / '8gpu.yaml'))
    assert config.distributed_type == DistributedType.MULTI_GPU and not config.use_cpu
    assert (config.num_machines, config.num_processes, config.gpu_ids) == (1, 8, 'all')

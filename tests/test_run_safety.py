"""Runs that cannot be mixed up (issue 13, items 5, 6, 7, 11): one writer per output folder, a training process
that ends with its launcher, resume that checks the config and the checkpoint, readable saved files."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from timm_blockdrop.train.checkpointing import checkpoint_dirs
from timm_blockdrop.train.config import load_config, resume_changes
from timm_blockdrop.train.lock import LOCK_FILE, OutputLock

from conftest import CIFAR10, RESNET_FILES
from test_recipes import CL_CONFIG, FT_CONFIG, REPO, _env, _fails, _lines, _recipe

TINY = ['--max-train-samples', '64', '--max-eval-samples', '32', '--batch-size', '32', '--epochs', '1',
        '--data', str(CIFAR10), '--set', 'num_workers=0', '--set', 'eval_batch_size=32',
        '--set', 'checkpoint_every_steps=1']


def _dead_pid():
    done = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    return int(done.stdout)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as ended
    status = Path(f'/proc/{pid}/status')
    return not (status.is_file() and 'zombie' in status.read_text())


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory, shared):
    """A finished 1-epoch curriculum run on 64 images (umask 022)."""
    out = tmp_path_factory.mktemp('safety') / 'run'
    old = os.umask(0o022)
    try:
        _recipe('curriculum', '--config', CL_CONFIG, '--output-dir', out, *TINY)
    finally:
        os.umask(old)
    return out


def test_the_lock_names_the_live_writer_and_takes_over_a_dead_one(tmp_path):
    sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        (tmp_path / LOCK_FILE).write_text(str(sleeper.pid))
        with pytest.raises(ValueError, match=f'in use by another run \\(process {sleeper.pid}'):
            OutputLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    (tmp_path / LOCK_FILE).write_text(str(_dead_pid()))
    with pytest.warns(UserWarning, match='which is not running'):
        lock = OutputLock(tmp_path).acquire()
    assert (tmp_path / LOCK_FILE).read_text() == str(os.getpid())
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_second_run_on_a_folder_in_use_is_refused(capsys, tmp_path, shared):
    out = tmp_path / 'busy'
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
    try:
        (out / LOCK_FILE).write_text(str(sleeper.pid))
        err = _fails(capsys, 'curriculum', '--config', CL_CONFIG, '--output-dir', out, *TINY)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert f'is in use by another run (process {sleeper.pid}' in err
    assert not (out / 'config.yaml').exists() and not (out / 'metrics.jsonl').exists()


def test_killing_the_launcher_ends_the_training_process(tmp_path, shared):
    out = tmp_path / 'orphan'
    launcher = subprocess.Popen(
        [str(Path(sys.executable).parent / 'accelerate'), 'launch', '--num_processes', '1', '--num_machines', '1',
         '--mixed_precision', 'no', '--dynamo_backend', 'no', str(REPO / 'recipes' / 'curriculum.py'),
         '--config', str(CL_CONFIG), '--output-dir', str(out), *TINY[:-2], '--epochs', '50'],
        cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / 'steps.jsonl').is_file():
            assert launcher.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        child = int((out / LOCK_FILE).read_text())
        assert child != launcher.pid and _alive(child)
        os.kill(launcher.pid, signal.SIGKILL)  # the launcher only, as a user's kill would
        launcher.wait()
        deadline = time.monotonic() + 60
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), 'the training process outlived its launcher'
    finally:
        try:
            os.killpg(launcher.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_resume_refuses_a_changed_config_and_keeps_config_yaml(capsys, tiny_run, tmp_path):
    run = tmp_path / 'run'
    shutil.copytree(tiny_run, run)
    saved = (run / 'config.yaml').read_text()
    args = ['--config', CL_CONFIG, '--output-dir', run, *TINY, '--resume-from', 'latest']
    err = _fails(capsys, 'curriculum', *args[:-2], '--batch-size', '64', '--set', 'seed=3', '--set', 'lr=0.1',
                 '--resume-from', 'latest')
    assert 'batch_size (32 -> 64)' in err and 'seed (0 -> 3)' in err and 'lr (0.001 -> 0.1)' in err
    assert 'data (' not in err and 'epochs (' not in err
    err = _fails(capsys, 'curriculum', *args, '--data', str(run))
    assert f'data ({str(CIFAR10)!r} -> {str(run)!r})' in err
    assert (run / 'config.yaml').read_text() == saved
    # epochs may grow: the run goes on, config.yaml stays, the change is recorded
    _recipe('curriculum', *args, '--epochs', '2')
    assert (run / 'config.yaml').read_text() == saved
    (change,) = _lines(run / 'config_history.jsonl')
    assert change['changes'] == {'epochs': [1, 2]} and change['step'] == 2
    assert [r['epoch'] for r in _lines(run / 'metrics.jsonl')] == [1, 2]


def test_resume_changes_by_hand():
    saved = load_config(CL_CONFIG)
    assert resume_changes(saved, load_config(CL_CONFIG, {'epochs': 6000, 'log_every_steps': 5})) == {
        'epochs': (5000, 6000), 'log_every_steps': (10, 5)}
    # keeping model_best/ from now on changes no trained number
    assert resume_changes(saved, load_config(CL_CONFIG, {'best_metric': 'val_reward'})) == {
        'best_metric': (None, 'val_reward')}
    with pytest.raises(ValueError, match="'best_metric' must be one of val_accuracy, val_reward"):
        load_config(CL_CONFIG, {'best_metric': 'val_blocks_mean'})
    with pytest.raises(ValueError, match=r'epochs \(5000 -> 10\)'):
        resume_changes(saved, load_config(CL_CONFIG, {'epochs': 10}))


def test_resume_from_an_incompatible_checkpoint_is_a_sentence(capsys, tiny_run, tmp_path):
    # the other stage's output, another architecture: the config says so
    err = _fails(capsys, 'finetune', '--config', FT_CONFIG, '--init-from', tiny_run, '--output-dir', tmp_path / 'ft',
                 *TINY, '--resume-from', tiny_run)
    assert 'stage (' in err and 'curriculum' in err and 'finetune' in err
    # without the run's config.yaml (a copied checkpoint), the checkpoint itself is checked
    lone = tmp_path / 'lone'
    shutil.copytree(checkpoint_dirs(tiny_run)[-1], lone / 'checkpoints' / 'step')
    err = _fails(capsys, 'curriculum', '--config', CL_CONFIG, '--output-dir', tmp_path / 'r20', *TINY,
                 '--set', 'model=cifar_resnet20', '--set', f'pretrained_file={RESNET_FILES[20]}', '--resume-from', lone)
    assert 'does not fit this run' in err and 'Traceback' not in err
    # a random_states file that cannot be read safely is an error, not skipped
    bad = tmp_path / 'bad'
    shutil.copytree(tiny_run, bad)
    latest = checkpoint_dirs(bad)[-1]
    (latest / 'random_states_0.pkl').write_bytes(b'not a pickle')
    err = _fails(capsys, 'curriculum', '--config', CL_CONFIG, '--output-dir', bad, *TINY, '--resume-from', 'latest')
    assert 'random_states_0.pkl' in err and 'cannot be read' in err


def test_output_dir_naming_a_file_is_a_sentence(capsys, tmp_path):
    (tmp_path / 'file').write_text('x')
    err = _fails(capsys, 'curriculum', '--config', CL_CONFIG, '--output-dir', tmp_path / 'file', *TINY)
    assert 'is a file, not a folder' in err


def test_saved_files_follow_the_umask(tiny_run):
    for path in [tiny_run / 'model' / 'model.safetensors', *checkpoint_dirs(tiny_run)[-1].iterdir()]:
        assert path.stat().st_mode & 0o777 == 0o644, path
    assert not (tiny_run / LOCK_FILE).exists()  # released at the end of the run

"""`blockdrop eval` end to end on the real CIFAR-10 test set, and its clear errors."""
import json

import pytest
import timm
import torch
from timm.models import save_for_hf

import timm_blockdrop
from timm_blockdrop.tools.cli import main

from conftest import CIFAR10, RESNET_FILES

KEYS = {'model', 'policy', 'n_images', 'top1', 'blocks_mean', 'blocks_std', 'flops_mean', 'flops_std',
        'unique_policies', 'images_per_s'}


def _eval(tmp_path, *args):
    out = tmp_path / 'report.json'
    assert main(['eval', '--data', str(CIFAR10), '--quiet', '--json', str(out), *args]) == 0
    return json.loads(out.read_text())


def test_resnet20_full_test_set_accuracy(tmp_path, shared):
    """The shared ResNet-20 checkpoint: 9173 / 10000 correct (91.73 %, shared/weights/README.md)."""
    r = _eval(tmp_path, '--model', 'cifar_resnet20', '--pretrained-file', str(RESNET_FILES[20]))
    assert KEYS <= set(r)
    assert r['n_images'] == 10000 and round(r['top1'] * r['n_images'] / 100) == 9173
    assert r['model'] == 'cifar_resnet20' and r['policy'] == 'full'
    assert r['blocks_mean'] == 9 and r['blocks_std'] == 0 and r['unique_policies'] == 1
    assert r['flops_mean'] == pytest.approx(8.11e7, rel=0.01) and r['flops_std'] == 0


def test_resnet32_heuristic_policies(tmp_path, shared, capsys):
    args = ['--model', 'cifar_resnet32', '--pretrained-file', str(RESNET_FILES[32]), '--max-samples', '200']
    full = _eval(tmp_path, *args)
    first = _eval(tmp_path, *args, '--policy', 'firstk', '--blocks', '7')
    dist = _eval(tmp_path, *args, '--policy', 'distributek', '--blocks', '7')
    rand = _eval(tmp_path, *args, '--policy', 'randomk', '--blocks', '7')
    assert first['blocks_mean'] == dist['blocks_mean'] == rand['blocks_mean'] == 7
    assert first['unique_policies'] == 1 and rand['unique_policies'] > 1
    for c, rates in rand['per_class_block_keep_rate'].items():  # class x block keep rates sum to the class's blocks
        assert len(rates) == 15 and sum(rates) == pytest.approx(rand['per_class_blocks_mean'][c], abs=1e-4)
    assert first['per_class_block_keep_rate']['0'] == [1.0] * 7 + [0.0] * 8
    assert first['flops_mean'] < full['flops_mean'] and first['top1'] < full['top1']
    assert 'top-1' in capsys.readouterr().out


def test_saved_blockdrop_checkpoint_evaluates_identically(tmp_path, shared):
    base = timm.create_model('cifar_resnet32', pretrained=True, pretrained_cfg_overlay=dict(file=str(RESNET_FILES[32])))
    model = timm_blockdrop.wrap(base)
    torch.nn.init.constant_(model.policy.fc.bias, 0.3)  # a policy that keeps some blocks and drops others
    save_for_hf(model, tmp_path / 'ckpt', safe_serialization=True)
    a = _eval(tmp_path, '--checkpoint', str(tmp_path / 'ckpt'), '--max-samples', '300')
    b = _eval(tmp_path, '--model', 'blockdrop_cifar_resnet32', '--pretrained-file',
              str(tmp_path / 'ckpt' / 'model.safetensors'), '--max-samples', '300')
    assert a['policy'] == 'learned' and a['model'] == 'blockdrop_cifar_resnet32'
    for key in ('top1', 'blocks_mean', 'blocks_std', 'flops_mean', 'unique_policies'):
        assert a[key] == b[key]
    t = _eval(tmp_path, '--checkpoint', str(tmp_path / 'ckpt'), '--max-samples', '300', '--threshold', '0')
    assert t['blocks_mean'] == 15 and t['threshold'] == 0
    assert t['flops_mean'] == t['full_flops'] + model.flops_table()[1]  # the policy net is counted


@pytest.mark.parametrize('args,message', [
    (['--model', 'cifar_resnet32', '--pretrained-file', 'missing.th'], 'pretrained weight file not found: missing.th'),
    (['--checkpoint', 'no/such/folder'], 'checkpoint folder not found'),
    (['--model', 'cifar_resnet32', '--pretrained-file', '{r20}'], "does not fit architecture 'cifar_resnet32'"),
    (['--model', 'not_a_model'], "unknown model 'not_a_model'"),
    (['--model', 'cifar_resnet20', '--pretrained-file', '{r20}', '--policy', 'lastk'], "unknown policy 'lastk'"),
    (['--model', 'cifar_resnet20', '--pretrained-file', '{r20}', '--policy', 'firstk', '--blocks', '10'],
     r'k must lie in \[0, K\] = \[0, 9\]'),
    (['--model', 'cifar_resnet20', '--pretrained-file', '{r20}', '--policy', 'firstk'], 'needs a number of blocks'),
    (['--model', 'cifar_resnet20', '--pretrained-file', '{r20}', '--policy', 'learned'], 'no policy network'),
    (['--model', 'blockdrop_cifar_resnet20', '--pretrained-file', '{r20}'], 'plain ResNet, not a BlockDrop model'),
    (['--model', 'cifar_resnet20', '--pretrained-file', '{r20}', '--split', 'validation'], "no split 'validation'"),
    (['--model', 'cifar_resnet20', '--pretrained-file', '{r20}', '--image-column', 'image'], "no image column 'image'"),
])
def test_bad_input_gets_a_clear_error(tmp_path, shared, capsys, args, message):
    args = [a.replace('{r20}', str(RESNET_FILES[20])) for a in args]
    assert main(['eval', '--data', str(CIFAR10), '--quiet', '--max-samples', '8', *args]) == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    import re
    assert re.search(message, err), err


@pytest.mark.parametrize('extra,message', [
    (['--data', 'no/such/dataset/dir'], 'dataset path not found'),
    (['--data', str(CIFAR10), '--threshold', '1.5'], r'threshold must lie in \[0, 1\]'),
])
def test_bad_data_or_threshold(tmp_path, shared, capsys, extra, message):
    model = timm_blockdrop.wrap(timm.create_model('cifar_resnet20'))
    save_for_hf(model, tmp_path / 'ckpt', safe_serialization=True)
    assert main(['eval', '--checkpoint', str(tmp_path / 'ckpt'), '--quiet', *extra]) == 2
    import re
    assert re.search(message, capsys.readouterr().err)


def test_corrupt_and_incomplete_checkpoint_folders(tmp_path, shared, capsys):
    model = timm_blockdrop.wrap(timm.create_model('cifar_resnet20'))
    save_for_hf(model, tmp_path / 'ok', safe_serialization=True)
    (tmp_path / 'noconfig').mkdir()
    (tmp_path / 'noconfig' / 'model.safetensors').write_bytes((tmp_path / 'ok' / 'model.safetensors').read_bytes())
    (tmp_path / 'corrupt').mkdir()
    (tmp_path / 'corrupt' / 'config.json').write_text((tmp_path / 'ok' / 'config.json').read_text())
    (tmp_path / 'corrupt' / 'model.safetensors').write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": garbage}')
    (tmp_path / 'vit').mkdir()
    (tmp_path / 'vit' / 'config.json').write_text(json.dumps({'architecture': 'no_such_arch'}))
    (tmp_path / 'vit' / 'model.safetensors').write_bytes(b'')
    for folder, message in (('noconfig', 'has no config.json'), ('corrupt', 'corrupt'),
                            ('vit', "architecture 'no_such_arch'")):
        assert main(['eval', '--checkpoint', str(tmp_path / folder), '--data', str(CIFAR10), '--quiet']) == 2
        assert message in capsys.readouterr().err


def test_tag_without_weights_says_so(capsys, shared):
    with pytest.raises(FileNotFoundError, match='no pretrained weights for cifar_resnet110'):
        timm.create_model('cifar_resnet110', pretrained=True)
    assert main(['eval', '--model', 'cifar_resnet110', '--data', str(CIFAR10), '--quiet']) == 2
    assert 'pretrained_cfg_overlay=dict(file=PATH)' in capsys.readouterr().err


def test_hf_hub_model_offline_not_cached(capsys, shared, tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path))
    assert main(['eval', '--model', 'hf-hub:timm-blockdrop/not-there', '--data', str(CIFAR10), '--quiet']) == 2
    err = capsys.readouterr().err
    assert 'Hub repo timm-blockdrop/not-there is not in the local cache' in err and 'Traceback' not in err


def test_timm_model_offline_names_its_repo(capsys, shared, tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path))
    assert main(['eval', '--model', 'resnet18', '--data', str(CIFAR10), '--quiet']) == 2
    err = capsys.readouterr().err
    assert 'Hub repo timm/resnet18' in err and 'hf download' in err


def test_compare_full_times_the_full_model_on_the_same_batches(tmp_path, shared, capsys):
    args = ['--model', 'cifar_resnet32', '--pretrained-file', str(RESNET_FILES[32]), '--max-samples', '300',
            '--batch-size', '100', '--policy', 'distributek', '--blocks', '7']
    plain = _eval(tmp_path, *args)
    r = _eval(tmp_path, *args, '--compare-full')
    assert 'speedup_vs_full_timm' not in plain
    assert r['top1'] == plain['top1'] and r['blocks_mean'] == 7  # timing the full model changes no prediction
    for name in ('full_timm', 'full_fast'):
        assert r[f'{name}_images_per_s'] > 0
        assert r[f'speedup_vs_{name}'] == pytest.approx(r['images_per_s'] / r[f'{name}_images_per_s'])
    out = capsys.readouterr().out
    assert f"speed-up {r['speedup_vs_full_fast']:.2f}x" in out and 'vs full_timm' in out


# ---- issue 13 item 11: a sentence, before any work, instead of a silent default or a traceback ----

def _one_sentence(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'Traceback' not in err, err
    return err


@pytest.mark.parametrize('argv,message', [
    (['eval', '--model', 'cifar_resnet20', '--pretrained-file', str(RESNET_FILES[20]), '--max-samples', '-5'],
     '--max-samples must be a positive integer, got -5'),
    (['eval', '--model', 'cifar_resnet20', '--pretrained-file', str(RESNET_FILES[20]), '--max-samples', '0'],
     '--max-samples must be a positive integer, got 0'),
    (['eval', '--model', 'cifar_resnet20', '--pretrained-file', str(RESNET_FILES[20]), '--blocks', '5'],
     '--blocks 5 applies to firstk, randomk and distributek only: the full policy keeps all 9 blocks'),
    (['bench', '--model', 'blockdrop_cifar_resnet20', '--image-size', '0'],
     '--image-size must be a positive integer, got 0'),
    (['bench', '--model', 'blockdrop_cifar_resnet20', '--image-size', '-3'],
     '--image-size must be a positive integer, got -3'),
    (['bench', '--model', 'blockdrop_cifar_resnet20', '--threads', '-1'], '--threads must be a positive integer, got -1'),
    (['eval', '--model', 'cifar_resnet20', '--device', 'gpu0'], "--device 'gpu0' is not a torch device"),
    (['bench', '--model', 'blockdrop_cifar_resnet20', '--device', 'cuda:0'], '--device cuda:0: this machine')
    if not torch.cuda.is_available() else
    (['bench', '--model', 'blockdrop_cifar_resnet20', '--device', 'gpu0'], "--device 'gpu0' is not a torch device"),
])
def test_bad_counts_are_refused(capsys, shared, argv, message):
    if argv[0] == 'eval':
        argv = argv + ['--data', str(CIFAR10), '--quiet']
    assert main(argv + ['--repeats', '1'] if argv[0] == 'bench' else argv) == 2
    assert message in _one_sentence(capsys)


def test_blocks_with_the_learned_policy_is_refused(tmp_path, shared, capsys):
    model = timm_blockdrop.wrap(timm.create_model('cifar_resnet20'))
    save_for_hf(model, tmp_path / 'ckpt', safe_serialization=True)
    assert main(['eval', '--checkpoint', str(tmp_path / 'ckpt'), '--data', str(CIFAR10), '--max-samples', '8',
                 '--quiet', '--blocks', '5']) == 2
    assert '--blocks 5 applies to firstk, randomk and distributek only: the learned policy decides' in \
        _one_sentence(capsys)


def test_json_naming_a_folder_fails_before_the_work(tmp_path, shared, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError('the work ran before the --json path was checked')

    from timm_blockdrop.tools import bench, cli
    monkeypatch.setattr(cli, 'load_model', no_work)
    monkeypatch.setattr(bench, 'load_model', no_work)
    for argv in (['eval', '--model', 'cifar_resnet20', '--data', str(CIFAR10)],
                 ['bench', '--model', 'blockdrop_cifar_resnet20']):
        assert main(argv + ['--json', str(tmp_path)]) == 2
        assert f'--json {tmp_path} is a folder' in _one_sentence(capsys)
    (tmp_path / 'file').write_text('')
    assert main(['eval', '--model', 'cifar_resnet20', '--data', str(CIFAR10),
                 '--json', str(tmp_path / 'file' / 'r.json')]) == 2
    assert 'is a file, not a folder' in _one_sentence(capsys)


@pytest.mark.parametrize('command', ['eval', 'bench'])
def test_unsupported_model_offline_says_unsupported_not_hub(capsys, shared, tmp_path, monkeypatch, command):
    """convnext_atto has weights on the Hub, none cached here: support is checked first, from the architecture."""
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path))
    argv = ['eval', '--data', str(CIFAR10), '--quiet'] if command == 'eval' else ['bench', '--pretrained-file',
                                                                                    str(tmp_path / 'w.pth')]
    assert main(argv + ['--model', 'convnext_atto']) == 2
    err = _one_sentence(capsys)
    assert "'convnext_atto' is a ConvNeXt" in err and 'BlockDrop cannot gate' in err and 'Hub' not in err


def test_compare_full_rotates_which_variant_runs_first(monkeypatch):
    """The variant that runs first after the data loading finds the caches cold: with a clock that charges 1 s to
    whichever runs first in a batch, rotating the order leaves every variant the same time (speed-ups of 1);
    always running BlockDrop first would make it about 1000x slower."""
    from timm_blockdrop.tools import evaluation
    ticks = iter(range(10 ** 6))
    n_variants = 3  # blockdrop, full_timm, full_fast

    class Clock:
        now = 0.0

        def perf_counter(self):
            call = next(ticks) - n_variants  # the untimed first batch reads the clock once per variant
            if call >= 0 and call % (2 * n_variants) == 1:  # the end of the first variant timed in a batch
                self.now += 1.0
            self.now += 0.001
            return self.now

    monkeypatch.setattr(evaluation, 'time', Clock())
    model = timm_blockdrop.wrap(timm.create_model('cifar_resnet20')).eval()
    g = torch.Generator().manual_seed(0)
    loader = [(torch.randn(2, 3, 32, 32, generator=g), torch.tensor([0, 1])) for _ in range(7)]  # 6 timed
    r = evaluation.evaluate_policy(model, loader, progress=False, compare_full=True)
    assert r['speedup_vs_full_fast'] == pytest.approx(1.0, rel=0.01)
    assert r['speedup_vs_full_timm'] == pytest.approx(1.0, rel=0.01)

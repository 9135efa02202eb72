"""Copy a training run's small files into docs/results/runs/<name>/ and rebuild the runs index (README.md).

    python docs/results/runs/record.py OUTPUT_DIR --command "CMD" --wall-s 694 [--name NAME] [--note TEXT]
        [--hardware "2-core CPU"] [--with-state]

Copies config.yaml, config_history.jsonl (what resumes changed), metrics.jsonl and steps.jsonl (if under 500 kB)
and writes run.json (command, wall time, hardware, note, last greedy val accuracy / blocks, and with best_metric
the epoch model_best/ holds). --with-state also copies the newest checkpoint folder, model/ and model_best/ (a
resumable state; CIFAR ResNet-32 is a few MB). README.md is regenerated from every run.json here.
"""
import argparse
import json
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent


def last_val(metrics):
    for r in reversed(metrics):
        if 'val_accuracy' in r:
            return r
    return {}


def record(args):
    src = Path(args.output_dir)
    name = args.name or src.name
    dst = HERE / name
    dst.mkdir(parents=True, exist_ok=True)
    for f in ('config.yaml', 'metrics.jsonl'):
        shutil.copy2(src / f, dst / f)
    if (src / 'config_history.jsonl').is_file():
        shutil.copy2(src / 'config_history.jsonl', dst / 'config_history.jsonl')
    steps = src / 'steps.jsonl'
    if steps.is_file() and steps.stat().st_size < 500_000:
        shutil.copy2(steps, dst / 'steps.jsonl')
    if args.with_state:
        ckpts = sorted((src / 'checkpoints').glob('step_*'), key=lambda p: int(p.name.split('_')[1]))
        if (dst / 'checkpoints').exists():
            shutil.rmtree(dst / 'checkpoints')
        if ckpts:
            shutil.copytree(ckpts[-1], dst / 'checkpoints' / ckpts[-1].name)
        for folder in ('model', 'model_best'):
            if (src / folder).is_dir():
                if (dst / folder).exists():
                    shutil.rmtree(dst / folder)
                shutil.copytree(src / folder, dst / folder)
    metrics = [json.loads(line) for line in (src / 'metrics.jsonl').read_text().splitlines() if line.strip()]
    v = last_val(metrics)
    best = [r for r in metrics if r.get('best')]  # (the last one flagged is what model_best/ holds)
    info = dict(name=name, command=args.command, wall_s=args.wall_s, hardware=args.hardware, note=args.note,
                epochs_done=metrics[-1]['epoch'] if metrics else 0, last_val_epoch=v.get('epoch'),
                val_accuracy=v.get('val_accuracy'), val_blocks_mean=v.get('val_blocks_mean'),
                val_images=v.get('val_images'), eval_split=_eval_split(src / 'config.yaml'))
    if best:
        info.update(best_epoch=best[-1]['epoch'], best_val_accuracy=best[-1]['val_accuracy'],
                    best_val_blocks_mean=best[-1]['val_blocks_mean'])
    (dst / 'run.json').write_text(json.dumps(info, indent=1) + '\n')
    write_index()


def _eval_split(config_file: Path) -> str:
    for line in config_file.read_text().splitlines() if config_file.is_file() else ():
        if line.startswith('eval_split:'):
            return line.split(':', 1)[1].strip()
    return '?'


def write_index():
    runs = [json.loads(p.read_text()) for p in sorted(HERE.glob('*/run.json'))]
    lines = ['# Training runs', '',
             'One line per run: its exact command, wall time, hardware and the greedy policy\'s accuracy / '
             'mean blocks at its last evaluation, on the split in the `eval split` column: `val` = the last 5,000 '
             'CIFAR-10 training images, held out of training (runs from issue 11 on); `test` = the first '
             '`val images` of the CIFAR-10 test split (the runs of issue 7, which selected on the test split: '
             'their figures are test-tuned and optimistic). '
             'Each folder holds the resolved `config.yaml`, `metrics.jsonl` (per epoch) and `steps.jsonl`; '
             '`run.json` holds this line. `model_best`: with best_metric, the epoch kept in `model_best/` and its '
             'accuracy @ blocks. Regenerate with `python docs/results/runs/record.py`.', '',
             '| run | epochs done | eval split | acc % | blocks | images | model_best | wall | hardware | note | '
             'command |',
             '|---|---|---|---|---|---|---|---|---|---|---|']
    for r in runs:
        acc = '' if r['val_accuracy'] is None else f"{r['val_accuracy']:.2f}"
        blocks = '' if r['val_blocks_mean'] is None else f"{r['val_blocks_mean']:.2f}"
        wall = '' if r['wall_s'] is None else f"{r['wall_s'] / 60:.1f} min"
        split = r.get('eval_split') or _eval_split(HERE / r['name'] / 'config.yaml')
        best = (f"epoch {r['best_epoch']}: {r['best_val_accuracy']:.2f} @ {r['best_val_blocks_mean']:.2f}"
                if r.get('best_epoch') is not None else '')
        lines.append(f"| [{r['name']}]({r['name']}/) | {r['epochs_done']} | {split} | {acc} | {blocks} | "
                     f"{r['val_images']} | {best} | "
                     f"{wall} | {r['hardware']} | {r['note'] or ''} | `{r['command']}` |")
    (HERE / 'README.md').write_text('\n'.join(lines) + '\n')


if __name__ == '__main__':
    p = argparse.ArgumentParser()
    p.add_argument('output_dir', nargs='?')
    p.add_argument('--name')
    p.add_argument('--command', default='')
    p.add_argument('--wall-s', type=float)
    p.add_argument('--hardware', default='2-core CPU (shared by 2 runs at a time)')
    p.add_argument('--note', default='')
    p.add_argument('--with-state', action='store_true')
    a = p.parse_args()
    if a.output_dir:
        record(a)
    else:
        write_index()

"""Accuracy vs blocks of every recorded run (last greedy evaluation; curriculum o, finetune s), with the paper's
points, and the val curves of each run: docs/results/runs/acc_vs_blocks.png. Regenerate with
    .venv/bin/python docs/results/runs/plot_runs.py
Only reads the metrics.jsonl / config.yaml files beside it."""
import json
from pathlib import Path

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

HERE = Path(__file__).resolve().parent
PAPER = [(15, 92.3, 'paper full ResNet-32'), (9.4, 88.6, 'paper curriculum'), (6.9, 91.3, 'paper finetuned')]


def main():
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for run in sorted(p.parent for p in HERE.glob('*/metrics.jsonl')):
        stage = yaml.safe_load((run / 'config.yaml').read_text())['stage']
        vals = [json.loads(x) for x in (run / 'metrics.jsonl').read_text().splitlines() if x.strip()]
        vals = [r for r in vals if 'val_accuracy' in r]
        if not vals:
            continue
        last = vals[-1]
        ax.scatter(last['val_blocks_mean'], last['val_accuracy'], marker='o' if stage == 'curriculum' else 's')
        ax.annotate(run.name.split('_')[0], (last['val_blocks_mean'], last['val_accuracy']), fontsize=8)
        ax2.plot([r['val_blocks_mean'] for r in vals], [r['val_accuracy'] for r in vals], '.-', lw=0.8,
                 label=run.name)
    for b, a, label in PAPER:
        ax.scatter(b, a, marker='*', s=120, color='k')
        ax.annotate(label, (b, a), fontsize=8)
    ax.scatter(15, 92.63, marker='*', s=120, color='r')
    ax.annotate('our base (full test set)', (15, 92.63), fontsize=8)
    for a in (ax, ax2):
        a.set_xlabel('blocks used (mean, greedy policy)')
        a.set_ylabel('val top-1 % (runs: their val_images; paper: full test)')
        a.grid(alpha=0.3)
    ax.set_title('last evaluation of each run')
    ax.set_ylim(40, 95)
    ax2.set_title('per-epoch evaluations (trajectories)')
    ax2.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(HERE / 'acc_vs_blocks.png', dpi=110)


if __name__ == '__main__':
    main()

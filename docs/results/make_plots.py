"""Regenerate every results plot from the JSON already committed under docs/results/ (no model is run).

Reads (every series is optional: a missing one is skipped with a printed note; eval/ holds `blockdrop eval --json`
reports)
    eval/full_cifar_resnet*.json        full base ResNets
    eval/threshold_sweep/<name>/*.json  one BlockDrop model at several greedy thresholds (a line per name)
    eval/gamma/*.json                   models retrained per gamma, named <stage>_g<gamma>.json (cl_g0.5, ft_g5)
    eval/*_noft.json, eval/*_ft.json    heuristic baselines without / with finetuning
    eval/release_*.json                 the released BlockDrop model(s)
    runs/*/metrics.jsonl (+ config.yaml) per-epoch metrics of the training runs
plus the paper's numbers (constants below, Table 1 and supplementary Table 3 of the paper).
Writes plots/acc_vs_flops.png, plots/blocks_hist.png, plots/per_class_policy.png, plots/training_curves.png,
plots/robust_base.png and plots/robust_base56.png.

    .venv/bin/python docs/results/make_plots.py [--root DIR]    # DIR defaults to docs/results
"""
import argparse
import json
import re
from pathlib import Path

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

HERE = Path(__file__).resolve().parent
CIFAR10 = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
NAMES = {'firstk': 'FirstK', 'randomk': 'RandomK', 'distributek': 'DistributeK', 'learned': 'BlockDrop', 'full': 'full'}
MARKERS = {'firstk': 'v', 'randomk': '^', 'distributek': 's', 'learned': 'o', 'full': 'D'}
COLORS = {'firstk': 'tab:red', 'randomk': 'tab:orange', 'distributek': 'tab:purple', 'learned': 'tab:cyan',
          'full': 'tab:gray'}
Y_SPLIT = 80  # acc_vs_flops.png: its y axis is broken here, top-1 above it gets three quarters of the height


def paper(name, top1, blocks, blocks_std=0.0, flops=None, flops_std=0.0, kind='learned', filled=True):
    return dict(name=name, top1=top1, blocks_mean=blocks, blocks_std=blocks_std, flops_mean=flops,
                flops_std=flops_std, kind=kind, filled=filled)


# The paper's ResNet-32 / CIFAR-10 numbers (../shared/paper/blockdrop-cvpr2018.md). FLOPs only where it gives them:
# the others are drawn on the blocks panel only.
PAPER = [
    # Table 1 "Full ResNet" row (92.3 %, 15 blocks); supplementary Table 3 "ResNet-32": 1.38E+08 ± 0.00E+00 FLOPs
    paper('full ResNet-32', 92.3, 15.0, 0.0, 1.38e8, 0.0, kind='full'),
    # Table 1 "Ours", curriculum learning only (no ft): 88.6 % at K = 9.4 blocks (no FLOPs given)
    paper('BlockDrop curriculum', 88.6, 9.4, filled=False),
    # Table 1 "Ours" (ft): 91.3 % at 6.9 blocks; supplementary Table 3 "BlockDrop-32 (gamma = 5)":
    # 8.66E+07 ± 1.40E+07 FLOPs, 6.9 ± 1.6 blocks, 91.3 %
    paper('BlockDrop ft', 91.3, 6.9, 1.6, 8.66e7, 1.40e7),
    # Table 1 heuristics jointly finetuned (ft) at K = 7 (the K of "Ours" ft): 84.3 / 88.9 / 90.2 %
    paper('FirstK ft', 84.3, 7, kind='firstk'),
    paper('RandomK ft', 88.9, 7, kind='randomk'),
    paper('DistributeK ft', 90.2, 7, kind='distributek'),
    # Table 1 heuristics without finetuning at K = 10 (the K of "Ours" curriculum): 16.6 / 20.5 / 23.4 %
    paper('FirstK', 16.6, 10, kind='firstk', filled=False),
    paper('RandomK', 20.5, 10, kind='randomk', filled=False),
    paper('DistributeK', 23.4, 10, kind='distributek', filled=False),
]


def load(root, pattern, what):
    """The eval reports matching ``eval/<pattern>`` (each with its file stem as ``name``), sorted by file name."""
    reports = []
    for path in sorted((root / 'eval').glob(pattern)):
        try:
            reports.append(dict(json.loads(path.read_text()), name=path.stem))
        except (OSError, ValueError) as e:
            print(f'skip {path}: {e}')
    if not reports:
        print(f'skip {what}: no eval/{pattern}')
    return reports


def draw(ax, axis, reports, label, annotate=None, line=False, **style):
    """top-1 vs ``<axis>_mean`` (axis 'flops' or 'blocks') with ``<axis>_std`` as horizontal error bars."""
    reports = [r for r in reports if r.get(f'{axis}_mean') is not None and r.get('top1') is not None]
    if not reports:
        return
    xs, ys = [r[f'{axis}_mean'] for r in reports], [r['top1'] for r in reports]
    style.setdefault('ls', '-' if line else 'none')
    ax.errorbar(xs, ys, xerr=[r.get(f'{axis}_std') or 0 for r in reports], label=label, capsize=2, lw=1, **style)
    if annotate:
        for r, x, y in zip(reports, xs, ys):
            ax.annotate(annotate(r), (x, y), xytext=(3, 3), textcoords='offset points', fontsize=7)


def by_flops(reports):
    return sorted(reports, key=lambda r: r.get('flops_mean') or 0)


def gamma_groups(reports):
    """Group eval/gamma/<stage>_g<gamma>.json reports by stage prefix, each sorted by FLOPs."""
    groups = {}
    for r in reports:
        m = re.match(r'(?:(.*?)_)?g([0-9.eE+-]+)$', r['name'])
        r['gamma_label'] = f"{m[1] or ''} γ={m[2]}".strip() if m else r['name']
        groups.setdefault(m[1] if m and m[1] else '', []).append(r)
    return {k: by_flops(v) for k, v in sorted(groups.items())}


def acc_series(root):
    """(reports, label, annotate, style) of every series of acc_vs_flops.png found under root/eval, paper last."""
    full = by_flops(load(root, 'full_cifar_resnet*.json', 'full base ResNets'))
    sweeps = {d.name: by_flops(load(root, f'threshold_sweep/{d.name}/*.json', f'threshold sweep {d.name}'))
              for d in sorted((root / 'eval' / 'threshold_sweep').glob('*')) if d.is_dir()}
    gammas = gamma_groups(load(root, 'gamma/*.json', 'retrained per gamma'))
    noft = load(root, '*_noft.json', 'heuristics without finetuning')
    ft = [r for r in load(root, '*_ft.json', 'heuristics finetuned') if not r['name'].startswith('release_')]
    release = load(root, 'release_*.json', 'released model')
    series = [(full, 'full base ResNet', lambda r: r.get('base_model') or r['name'],
               dict(line=True, marker='D', color='tab:gray', ls=':'))]
    for (name, sweep), color in zip(sweeps.items(), ('tab:blue', 'tab:cyan', 'tab:purple')):
        series.append((sweep, f'threshold sweep of {name} (one policy)', lambda r: f"t={r.get('threshold')}",
                       dict(line=True, marker='o', color=color)))
    for (stage, group), color in zip(gammas.items(), ('tab:green', 'tab:olive', 'tab:brown', 'tab:pink')):
        series.append((group, 'retrained per gamma' + (f' ({stage})' if stage else ''), lambda r: r['gamma_label'],
                       dict(line=True, marker='P', color=color)))
    for reports, tag, filled in ((noft, 'no ft', False), (ft, 'ft', True)):
        for kind in sorted({r.get('policy') for r in reports}, key=str):
            color = COLORS.get(kind, 'tab:pink')
            series.append(([r for r in reports if r.get('policy') == kind], f'{NAMES.get(kind, kind)} {tag}',
                           lambda r: f"k={r.get('blocks')}",
                           dict(marker=MARKERS.get(kind, 'X'), color=color, mfc=color if filled else 'none', ms=7)))
    series += [([r], r['name'], None, dict(marker='*', ms=16, color='gold', mec='k', ecolor='k')) for r in release]
    series += [([p], f"paper: {p['name']}", None, dict(marker=MARKERS[p['kind']], color='k', ms=7,
                                                         mfc='k' if p['filled'] else 'none')) for p in PAPER]
    return series


def plot_acc_vs_flops(root, out):
    """Two panels (FLOPs, blocks), each with its y axis broken at Y_SPLIT: the accurate models get the room."""
    series = acc_series(root)
    top1 = [r['top1'] for reports, *_ in series for r in reports if r.get('top1') is not None]
    fig = plt.figure(figsize=(17, 8))
    grid = fig.add_gridspec(2, 2, height_ratios=(3, 1), hspace=0.03)
    for col, (axis, xlabel, title) in enumerate((
            ('flops', 'mean FLOPs per image (learned policies: incl. the policy network)', 'top-1 vs FLOPs (Fig. 3a)'),
            ('blocks', 'mean blocks used per image', 'top-1 vs blocks (Table 1)'))):
        high = fig.add_subplot(grid[0, col])
        low = fig.add_subplot(grid[1, col], sharex=high)
        for ax in (high, low):
            for reports, label, annotate, style in series:
                draw(ax, axis, reports, label, annotate, **style)
            ax.grid(alpha=0.3)
        high.set_ylim(Y_SPLIT, max(top1) + 1.5)
        low.set_ylim(min(min(top1) - 3, Y_SPLIT - 10), Y_SPLIT)
        high.spines['bottom'].set_visible(False)
        low.spines['top'].set_visible(False)
        high.tick_params(labelbottom=False, bottom=False)
        high.set_title(f'{title}; y axis broken at {Y_SPLIT} %')
        high.set_ylabel('top-1 % (CIFAR-10 test)')
        low.set_xlabel(xlabel)
    fig.legend(*high.get_legend_handles_labels(), fontsize=8, loc='center right')
    fig.subplots_adjust(left=0.05, right=0.82, top=0.95, bottom=0.08, wspace=0.15)
    return save(fig, out / 'acc_vs_flops.png')


def release_reports(root, field, plot):
    """The release_*.json reports that carry ``field`` (a note for ``plot`` where none does)."""
    found = load(root, 'release_*.json', f'released model ({plot})')
    release = [r for r in found if r.get(field)]
    if found and not release:
        print(f'skip {plot}: no release report with {field}')
    return release


def plot_blocks_hist(root, out):
    release = release_reports(root, 'blocks_hist', 'blocks_hist.png')
    if not release:
        return None
    fig, axes = plt.subplots(1, len(release), figsize=(6 * len(release), 4), squeeze=False)
    for ax, r in zip(axes[0], release):
        hist = r['blocks_hist']
        ax.bar(range(len(hist)), [100.0 * h / max(sum(hist), 1) for h in hist], color='tab:blue')
        ax.set_title(f"{r['name']}: top-1 {r['top1']:.2f} %, {r['blocks_mean']:.2f} ± {r.get('blocks_std', 0):.2f} "
                     f"blocks", fontsize=9)
        ax.set_xlabel(f"blocks used (of {len(hist) - 1})")
        ax.set_ylabel('% of images')
        ax.set_xticks(range(len(hist)))
        ax.grid(alpha=0.3, axis='y')
    fig.tight_layout()
    return save(fig, out / 'blocks_hist.png')


def plot_per_class_policy(root, out):
    release = release_reports(root, 'per_class_block_keep_rate', 'per_class_policy.png')
    if not release:
        return None
    fig, axes = plt.subplots(len(release), 1, figsize=(9, 4.5 * len(release)), squeeze=False)
    for ax, r in zip(axes[:, 0], release):
        per_class = sorted(r['per_class_block_keep_rate'].items(), key=lambda kv: int(kv[0]))
        names = [CIFAR10[int(c)] if len(per_class) == 10 else str(c) for c, _ in per_class]
        im = ax.imshow([rates for _, rates in per_class], aspect='auto', cmap='viridis', vmin=0, vmax=1)
        ax.set_yticks(range(len(names)), names, fontsize=7 if len(names) <= 20 else 4)
        ax.set_xticks(range(len(per_class[0][1])))
        ax.set_xlabel('block')
        ax.set_title(f"{r['name']}: per-class block keep rate (top-1 {r['top1']:.2f} %, "
                     f"{r['blocks_mean']:.2f} blocks)", fontsize=9)
        fig.colorbar(im, ax=ax, label='keep rate')
    fig.tight_layout()
    return save(fig, out / 'per_class_policy.png')


def read_run(run):
    rows = [json.loads(x) for x in (run / 'metrics.jsonl').read_text().splitlines() if x.strip()]
    config = run / 'config.yaml'
    stage = (yaml.safe_load(config.read_text()) or {}).get('stage') if config.exists() else None
    return rows, stage


def plot_training_curves(root, out):
    runs = sorted(p.parent for p in (root / 'runs').glob('*/metrics.jsonl'))
    if not runs:
        print('skip training_curves.png: no runs/*/metrics.jsonl')
        return None
    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    (acc, blocks), (reward, last) = axes
    cmap = plt.get_cmap('tab20')
    any_reward = False
    for i, run in enumerate(runs):
        try:
            rows, stage = read_run(run)
        except (OSError, ValueError, yaml.YAMLError) as e:
            print(f'skip run {run}: {e}')
            continue
        style = dict(color=cmap(i % 20), ls='--' if stage == 'finetune' else '-', lw=1, marker='.',
                     label=run.name.split('_')[0])
        for ax, key in ((acc, 'val_accuracy'), (blocks, 'val_blocks_mean'), (reward, 'train_reward')):
            pts = [(r['epoch'], r[key]) for r in rows if key in r and 'epoch' in r]
            if pts:
                ax.plot(*zip(*pts), **style)
                any_reward |= key == 'train_reward'
        vals = [r for r in rows if 'val_accuracy' in r and 'val_blocks_mean' in r]
        if vals:
            x, y = vals[-1]['val_blocks_mean'], vals[-1]['val_accuracy']
            last.scatter(x, y, color=style['color'], marker='s' if stage == 'finetune' else 'o')
            last.annotate(style['label'], (x, y), xytext=(3, 3), textcoords='offset points', fontsize=7)
    for p in PAPER:
        if p['top1'] > 80:  # the heuristics without finetuning are far below every run
            last.scatter(p['blocks_mean'], p['top1'], marker=MARKERS[p['kind']], s=50, edgecolors='k',
                         facecolors='k' if p['filled'] else 'none', label=f"paper: {p['name']}")
    if not any_reward:
        reward.set_visible(False)
    for ax, ylabel in ((acc, 'val top-1 %'), (blocks, 'val blocks used (mean, greedy)'), (reward, 'train reward')):
        ax.set_xlabel('epoch')
        ax.set_ylabel(ylabel)
    acc.set_title('val accuracy (solid: curriculum, dashed: finetune)')
    blocks.set_title('val blocks used')
    reward.set_title('train reward (mean over the epoch)')
    last.set_title('last val evaluation of each run (o curriculum, s finetune; black: paper, full test set)',
                   fontsize=10)
    last.set_xlabel('blocks used (mean, greedy policy)')
    last.set_ylabel('val top-1 % (runs: their val_images)')
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    acc.legend(fontsize=7, ncol=2)
    last.legend(fontsize=7, loc='lower right')
    fig.tight_layout()
    return save(fig, out / 'training_curves.png')


def _robust_panel(folder, stages, ks, num_blocks, title, path):
    """DistributeK-K and RandomK-K (val and test) of one ResNet after each robust-base stage: the
    ``<stage>_<split>_<policy><K>.json`` and ``<stage>_<split>_full.json`` reports of ``robust_base/range.sh``."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, split, name_split in zip(axes, ('val', 'test'), ('val (last 5,000 training images)', 'test (10,000)')):
        for stage, name, style in stages:
            for policy, color in (('distributek', 'C0'), ('randomk', 'C1')):
                pts = []
                for k in ks:
                    f = folder / f'{stage}_{split}_{policy}{k}.json'
                    if f.is_file():
                        pts.append((k, json.loads(f.read_text())['top1']))
                if pts:
                    ax.plot(*zip(*pts), color=color, label=f'{policy}, {name}', **style)
            full = folder / f'{stage}_{split}_full.json'
            if full.is_file():
                ax.axhline(json.loads(full.read_text())['top1'], color='gray', ls=style['ls'], lw=0.8,
                           label=f'all {num_blocks} blocks, {name}')
        ax.set_title(name_split, fontsize=9)
        ax.set_xlabel(f'blocks kept (K of {num_blocks})')
        ax.set_xticks(ks)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel('top-1 %')
    axes[1].legend(fontsize=6, loc='lower right', ncol=2)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def plot_robust_base(root, out):
    """Issue 11 item 2: DistributeK-K and RandomK-K before and after the robust-base stages. ResNet-32: RB7
    (exactly 7 blocks) and RR (each image 4-10 blocks, from RB7); ResNet-56: RR56 (each image 9-17 of 27 blocks)
    and RR56m / RR56m16 (12-20, 10 / 16 epochs)."""
    folder = root / 'eval' / 'robust_base'
    if not folder.is_dir():
        return None
    before = ('shared weights', dict(ls='--', marker='o'))
    _robust_panel(folder, (('before', *before), ('after', 'RB7', dict(ls='-', marker='s')),
                           ('range', 'RR', dict(ls=':', marker='^'))), (4, 5, 7, 9, 10), 15,
                  'ResNet-32 under hard block drops: shared weights, after RB7 (RandomK-7, 12 epochs), after RR '
                  '(RandomK with K in 4-10 per image, 16 epochs from RB7)', out / 'robust_base.png')
    return _robust_panel(folder, (('before56', *before), ('range56', 'RR56', dict(ls=':', marker='^')),
                                  ('mild56', 'RR56m', dict(ls='-.', marker='v')),
                                  ('mild56x', 'RR56m16', dict(ls='-', marker='s'))),
                         (9, 13, 17), 27, 'ResNet-56 under hard block drops: shared weights, after RR56 (RandomK with '
                         'K in 9-17 of 27 per image, 16 epochs, distilled), after RR56m / RR56m16 (K in 12-20, '
                         '10 / 16 epochs)',
                         out / 'robust_base56.png')


def save(fig, path):
    fig.savefig(path, dpi=110)
    plt.close(fig)
    try:
        print(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        print(path)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--root', type=Path, default=HERE, help='folder holding eval/ and runs/ (default: %(default)s)')
    args = parser.parse_args()
    out = args.root / 'plots'
    out.mkdir(parents=True, exist_ok=True)
    for plot in (plot_acc_vs_flops, plot_blocks_hist, plot_per_class_policy, plot_training_curves, plot_robust_base):
        plot(args.root, out)


if __name__ == '__main__':
    main()

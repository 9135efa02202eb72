"""``blockdrop compare``: is this BlockDrop model better than a smaller plain ResNet? (issue 11, item 6)

Each SPEC is a checkpoint folder (``save_for_hf`` layout, e.g. ``release/blockdrop_cifar_resnet32.cifar10``) or
``NAME=WEIGHTS_FILE`` for a static timm model (``cifar_resnet20=resnet20-12fca82f.th``). Every model sees the same
images: one pass gives its top-1, blocks and FLOPs per image; then every model is timed on the same first batches,
interleaved, with ``bench``'s timer (median of the rounds). Each runs on the fastest engine it has: the fused copy
(``fuse()``), a BlockDrop model under its learned (greedy) policy with the policy network counted, a static model
with every block and no policy (``forward_full``, as ``blockdrop eval --compare-full`` times the full ResNet).
The report plots top-1 against ms per image with the Pareto front: the models no other is both as accurate and as
fast as.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
from timm.data import resolve_data_config
from tqdm.auto import tqdm

from .bench import interleaved_times, ms_summary
from .evaluation import load_accuracy_metric
from .arguments import check_output_file, check_positive, write_json
from ..data import check_labels, eval_transform, find_columns, load_split, make_loader, with_transform
from ..models.blockdrop import BlockDropResNet
from ..models.fused import tune_cpu_allocator
from ..models.loading import as_blockdrop, load_model

try:  # plotting is an extra: pip install 'timm-blockdrop[plots]'
    from matplotlib.figure import Figure
except ImportError:
    Figure = None

__all__ = ['Contender', 'load_contender', 'compare', 'pareto_front', 'plot_pareto', 'format_rows',
           'add_compare_arguments', 'run_compare']


@dataclass
class Contender:
    """One SPEC: its label, the model (a BlockDrop model, or a static one wrapped for its blocks and FLOPs), the
    fused copy it runs on and whether it is static (every block, no policy)."""
    label: str
    spec: str
    model: BlockDropResNet
    fused: torch.nn.Module
    static: bool

    def run(self, x: torch.Tensor):
        """(logits, keep) on the fused engine: the learned policy, or every block for a static model."""
        if self.static:
            return self.fused.forward_full(x), torch.ones(x.shape[0], self.model.num_blocks, dtype=torch.bool)
        return self.fused.forward_and_policy(x)


def load_contender(spec: str) -> Contender:
    """A SPEC (checkpoint folder, or NAME=WEIGHTS_FILE) as a ``Contender``, or one sentence saying what is wrong."""
    if '=' in spec:
        name, file = spec.split('=', 1)
        if not name or not file:
            raise ValueError(f"SPEC '{spec}': expected NAME=WEIGHTS_FILE (e.g. cifar_resnet20=resnet20.th) or a "
                             f"checkpoint folder")
        loaded, label = load_model(name, pretrained_file=file, require='wrappable'), name
    else:
        if not Path(spec).is_dir():
            raise FileNotFoundError(f"SPEC '{spec}' is neither a checkpoint folder nor NAME=WEIGHTS_FILE")
        path = Path(spec).resolve()
        # a recipe's <output_dir>/model folder is known by its run: 'JS7/model', not 'model'
        label = f'{path.parent.name}/{path.name}' if path.name == 'model' else path.name
        loaded = load_model(checkpoint=spec, require='wrappable')
    model = as_blockdrop(loaded).eval()
    return Contender(label, spec, model, model.fuse(), static=not isinstance(loaded, BlockDropResNet))


def pareto_front(rows: Sequence[Dict]) -> List[str]:
    """Labels of the rows no other row beats: at least as accurate and as fast, and better in one of the two."""
    def beaten(r):
        return any(o['top1'] >= r['top1'] and o['ms_per_image'] <= r['ms_per_image']
                   and (o['top1'] > r['top1'] or o['ms_per_image'] < r['ms_per_image']) for o in rows)
    return [r['label'] for r in rows if not beaten(r)]


def compare(
        contenders: Sequence[Contender],
        dataset,
        image_column: str,
        label_column: str,
        batch_size: int = 256,
        time_batches: int = 4,
        repeats: int = 5,
        min_seconds: float = 0.05,
        data: Optional[str] = None,
        progress: bool = True,
) -> List[Dict]:
    """One row per contender: label, model, top1 (%), ms_per_image, flops_mean, blocks_mean (see module docstring)."""
    for num_classes in sorted({c.model.num_classes for c in contenders}):
        check_labels(dataset, label_column, num_classes, data)
    # contenders with the same data config share a loader; each sees the same rows in the same order
    groups: Dict[str, List[Contender]] = {}
    for c in contenders:
        groups.setdefault(repr(sorted(resolve_data_config(model=c.model).items())), []).append(c)
    stats = {c.label: dict(metric=load_accuracy_metric(), blocks=[], flops=[]) for c in contenders}
    timing: Dict[str, List[torch.Tensor]] = {}
    with torch.inference_mode():
        for group in groups.values():
            rows = with_transform(dataset.select(range(len(dataset))), eval_transform(group[0].model), image_column,
                                  label_column)
            for i, (images, labels) in enumerate(tqdm(make_loader(rows, batch_size, data=data), leave=False,
                                                      desc='compare', disable=not progress)):
                images = images.contiguous(memory_format=torch.channels_last)
                for c in group:
                    logits, keep = c.run(images)
                    s = stats[c.label]
                    s['metric'].add_batch(predictions=logits.argmax(1).cpu(), references=labels)
                    s['blocks'].append(keep.cpu().sum(1).double())
                    s['flops'].append(c.model.flops(keep.cpu(), include_policy=not c.static,
                                                    img_size=tuple(images.shape[-2:])))
                    if i < time_batches:
                        timing.setdefault(c.label, []).append(images)
        n_inputs = min(len(v) for v in timing.values())
        runs: Dict[str, Callable[[int], object]] = {
            c.label: (lambda i, c=c: c.run(timing[c.label][i % n_inputs])) for c in contenders}  # (cycles)
        seconds = interleaved_times(runs, repeats, min_seconds, n_inputs)
    per_call = sum(x.shape[0] for x in next(iter(timing.values()))[:n_inputs]) / n_inputs
    out = []
    for c in contenders:
        s = stats[c.label]
        out.append(dict(
            label=c.label, model=c.model.pretrained_cfg.get('architecture') if not c.static else
            c.model._model_args.get('base_model'),
            top1=100.0 * s['metric'].compute()['accuracy'], ms_per_image=ms_summary(seconds[c.label], per_call)['median'],
            flops_mean=float(torch.cat(s['flops']).mean()), blocks_mean=float(torch.cat(s['blocks']).mean()),
            engine='fused, every block' if c.static else 'fused, learned policy', spec=c.spec))
    return out


def plot_pareto(rows: Sequence[Dict], path: str, title: str = '') -> None:
    """Top-1 against ms per image, each model labelled, the Pareto front as a step line."""
    front = set(pareto_front(rows))
    fig = Figure(figsize=(6.4, 4.6), layout='constrained')
    ax = fig.subplots()
    for r in rows:
        on = r['label'] in front
        ax.scatter(r['ms_per_image'], r['top1'], s=40, color='tab:red' if on else 'tab:gray', zorder=3)
        ax.annotate(r['label'], (r['ms_per_image'], r['top1']), textcoords='offset points', xytext=(0, 7),
                    ha='center', fontsize=8)
    pts = sorted((r['ms_per_image'], r['top1']) for r in rows if r['label'] in front)
    ax.step([p[0] for p in pts], [p[1] for p in pts], where='post', color='tab:red', alpha=0.6,
            label='Pareto front')
    ax.set_xlabel('ms per image (fused engine, median of interleaved rounds)')
    ax.set_ylabel('top-1 (%)')
    ax.set_title(title, fontsize=9)
    ax.margins(0.25)
    ax.grid(alpha=0.3)
    ax.legend(loc='best', fontsize=8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def format_rows(rows: Sequence[Dict]) -> str:
    front = set(pareto_front(rows))
    width = max(12, *(len(r['label']) for r in rows))
    lines = [f"{'':2}{'label':<{width}} {'model':<26} {'top-1':>7} {'ms/img':>8} {'FLOPs/img':>10} {'blocks':>7}"]
    for r in rows:
        lines.append(f"{'*' if r['label'] in front else ' ':2}{r['label']:<{width}} {r['model']:<26} "
                     f"{r['top1']:>6.2f}% {r['ms_per_image']:>8.4f} {r['flops_mean']:>10.3E} {r['blocks_mean']:>7.2f}")
    return '\n'.join(lines + ['  (* on the Pareto front: no other model is both as accurate and as fast)'])


def add_compare_arguments(sub) -> None:
    p = sub.add_parser('compare', help='BlockDrop models against static ResNets: top-1 vs ms/image, Pareto front')
    p.add_argument('specs', nargs='+', metavar='SPEC',
                   help='a checkpoint folder (save_for_hf layout) or NAME=WEIGHTS_FILE for a static timm model')
    p.add_argument('--data', required=True, help='HF datasets Hub id or local path (e.g. ../shared/data/cifar10)')
    p.add_argument('--split', default='test')
    p.add_argument('--image-column', default=None, help='default: the datasets.Image column')
    p.add_argument('--label-column', default=None, help='default: the ClassLabel column')
    p.add_argument('--batch-size', type=int, default=256)
    p.add_argument('--max-samples', type=int, default=None, help='evaluate only the first N images')
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads')
    p.add_argument('--time-batches', type=int, default=4, help='time every model on the first N batches')
    p.add_argument('--repeats', type=int, default=5, help='interleaved timing rounds (the median is reported)')
    p.add_argument('--json', required=True, help='write {"rows": [...]} here')
    p.add_argument('--plot', default=None, help='plot top-1 against ms/image with the Pareto front here (PNG)')
    p.add_argument('--quiet', action='store_true', help='no progress bar')


def _check_args(args) -> None:
    check_positive(batch_size=args.batch_size, max_samples=args.max_samples, threads=args.threads,
                   time_batches=args.time_batches, repeats=args.repeats)
    check_output_file(args.json, '--json')
    check_output_file(args.plot, '--plot')
    if args.plot and Figure is None:
        raise ValueError("--plot needs matplotlib, which is not installed: pip install 'timm-blockdrop[plots]' (or "
                         "leave out --plot)")


def run_compare(args) -> Dict:
    _check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_cpu_allocator()  # as bench does: process-wide, the same for every model
    contenders = [load_contender(spec) for spec in args.specs]
    labels = [c.label for c in contenders]
    if len(set(labels)) != len(labels):
        twice = sorted({x for x in labels if labels.count(x) > 1})
        raise ValueError(f"two SPECs have the same label ({', '.join(twice)}): give each model once")
    dataset = load_split(args.data, args.split)
    image_column, label_column = find_columns(dataset, args.image_column, args.label_column, args.data)
    if args.max_samples is not None:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"split '{args.split}' of {args.data} is empty: nothing to compare on")
    rows = compare(contenders, dataset, image_column, label_column, args.batch_size, args.time_batches, args.repeats,
                   data=args.data, progress=not args.quiet)
    report = dict(rows=rows, pareto=pareto_front(rows), data=args.data, split=args.split, n_images=len(dataset),
                  batch_size=args.batch_size, threads=torch.get_num_threads())
    print(format_rows(rows))
    write_json(args.json, report)
    if args.plot:
        plot_pareto(rows, args.plot, f'{args.data} ({args.split}, {len(dataset)} images), batch {args.batch_size}, '
                                     f'{torch.get_num_threads()} threads')
    return report

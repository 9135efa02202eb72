"""``blockdrop`` console script: ``blockdrop eval | bench | publish | compare``.

Thin: parse arguments, call library functions, print the report and write JSON. Errors the user can fix
(bad names, paths, values) print one line and exit with status 2, without a traceback.
"""
import argparse
import os
import sys
from typing import List, Optional

import torch

from . import bench, compare, hub
from .arguments import check_device, check_output_file, check_positive, write_json
from .evaluation import POLICIES, evaluate_policy, format_report
from ..data import check_labels, eval_transform, find_columns, load_split, make_loader, with_transform
from ..errors import USER_ERRORS
from ..models.blockdrop import BlockDropResNet
from ..models.loading import as_blockdrop, load_model


def _add_eval(sub) -> None:
    p = sub.add_parser('eval', help='evaluate a (BlockDrop) ResNet: top-1, blocks, FLOPs, unique policies')
    p.add_argument('--model', help='timm model name (blockdrop_* or a base ResNet such as cifar_resnet32)')
    p.add_argument('--checkpoint', help='checkpoint folder in save_for_hf layout (model.safetensors + config.json)')
    p.add_argument('--pretrained-file', help='weight file for --model (e.g. ../shared/weights/...th)')
    p.add_argument('--data', required=True, help='HF datasets Hub id or local path (e.g. ../shared/data/cifar10)')
    p.add_argument('--split', default='test')
    p.add_argument('--image-column', default=None, help='default: the datasets.Image column')
    p.add_argument('--label-column', default=None, help='default: the ClassLabel column')
    p.add_argument('--policy', choices=None, default=None,
                   help=f"one of {', '.join(POLICIES)} (default: learned for BlockDrop models, full for base models)")
    p.add_argument('--blocks', type=int, default=None, help='k for firstk / randomk / distributek')
    p.add_argument('--threshold', type=float, default=None, help='greedy threshold of the learned policy (0.5)')
    p.add_argument('--batch-size', type=int, default=256)
    p.add_argument('--max-samples', type=int, default=None, help='evaluate only the first N images')
    p.add_argument('--num-workers', type=int, default=0)
    p.add_argument('--seed', type=int, default=0, help='seed of randomk')
    p.add_argument('--device', default='cpu')
    p.add_argument('--json', default=None, help='write the report as JSON here')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    p.add_argument('--compare-full', action='store_true',
                   help='also time the full base ResNet (plain timm and fused) on the same batches: speed-up')


def run_eval(args) -> dict:
    check_positive(batch_size=args.batch_size, max_samples=args.max_samples)
    check_device(args.device)
    check_output_file(args.json, '--json')
    loaded = load_model(args.model, args.checkpoint, args.pretrained_file, require='wrappable')
    policy = args.policy or ('learned' if isinstance(loaded, BlockDropResNet) else 'full')
    if policy == 'learned' and not isinstance(loaded, BlockDropResNet):
        raise ValueError(f"'{loaded.pretrained_cfg.get('architecture')}' is a plain ResNet with no policy network: "
                         f"use --policy full, firstk, randomk or distributek")
    model = as_blockdrop(loaded)
    if args.threshold is not None:
        model.threshold = args.threshold
    dataset = load_split(args.data, args.split)
    image_column, label_column = find_columns(dataset, args.image_column, args.label_column, args.data)
    if args.max_samples is not None:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    check_labels(dataset, label_column, model.num_classes, args.data)
    with_transform(dataset, eval_transform(model), image_column, label_column)
    loader = make_loader(dataset, args.batch_size, num_workers=args.num_workers, data=args.data)
    torch.manual_seed(args.seed)
    report = evaluate_policy(model, loader, policy, args.blocks, seed=args.seed, device=args.device,
                             progress=not args.quiet, compare_full=args.compare_full)
    report.update(model=loaded.pretrained_cfg.get('architecture'), checkpoint=args.checkpoint,
                  pretrained_file=args.pretrained_file, data=args.data, split=args.split)
    print(format_report(report))
    if args.json:
        write_json(args.json, report)
    return report


# subcommand name -> (function adding its parser to the subparsers, function running it on the parsed args)
COMMANDS = {
    'eval': (_add_eval, run_eval),
    'bench': (bench.add_bench_arguments, bench.run_bench),
    'publish': (hub.add_publish_arguments, hub.run_publish),
    'compare': (compare.add_compare_arguments, compare.run_compare),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='blockdrop', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)
    for add_parser, _ in COMMANDS.values():
        add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command][1](args)
    except USER_ERRORS as e:
        if os.environ.get('BLOCKDROP_DEBUG'):
            raise
        hint = '' if isinstance(e, (ValueError, FileNotFoundError)) else ' (BLOCKDROP_DEBUG=1 shows the traceback)'
        print(f'blockdrop {args.command}: error: {e}{hint}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())

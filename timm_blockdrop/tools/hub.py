"""``blockdrop publish``: a BlockDrop checkpoint folder as a Hugging Face Hub model repo, model card included.

The repo folder is timm's Hub layout, written by ``timm.models.save_for_hf`` (safetensors, not timm's ``.bin``
default): ``model.safetensors`` and ``config.json`` (architecture, num_classes, pretrained_cfg and, in
``model_args``, the BlockDrop settings: base_model, base_kwargs, num_blocks K, policy_model, policy_img_size,
alpha, threshold), plus ``README.md``, the model card rendered by ``huggingface_hub.ModelCard.from_template``
from ``hub_cards/blockdrop_model_card.md`` with Hub metadata and a results table filled from
``blockdrop eval --json`` reports, and the run's plots and training configs. ``HfApi.upload_folder`` uploads it
(token from ``hf auth login`` or HF_TOKEN); ``--dry-run FOLDER`` writes the folder and stops.

The published repo loads through timm's own machinery: ``timm.create_model('hf-hub:ORG/NAME', pretrained=True)``,
``pretrained=True`` on a tag whose ``hf_hub_id`` is the repo (``models/pretrained_cfgs.py``), or
``local-dir:FOLDER``.
"""
import json
import math
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import timm
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .. import __version__
from ..errors import hub_upload_errors
from ..models.loading import load_model
from ..models.blockdrop import BlockDropResNet
from ..models.pretrained_cfgs import DATASETS, PAPER_ID, hub_id

__all__ = ['publish', 'build_repo_folder', 'render_card', 'read_eval_report', 'check_repo_id',
           'add_publish_arguments', 'run_publish', 'CARD_TEMPLATE', 'PAPER_RESULTS']

CARD_TEMPLATE = resources.files('timm_blockdrop.tools') / 'hub_cards' / 'blockdrop_model_card.md'
TAGS = ['image-classification', 'timm', 'timm-blockdrop', 'blockdrop', 'dynamic-inference',
        'conditional-computation', 'resnet', PAPER_ID.replace('arXiv', 'arxiv')]
REPORT_KEYS = ('model', 'policy', 'num_blocks', 'n_images', 'top1', 'blocks_mean', 'blocks_std', 'flops_mean',
               'flops_std', 'full_flops', 'unique_policies')
# the model's own files; everything else in a checkpoint folder but plots stays behind
_MODEL_FILES = ('model.safetensors', 'config.json', 'README.md')

# (base model, dataset tag) -> the paper's rows for it: (label, top-1 %, blocks mean ± std, FLOPs mean ± std),
# from its supplementary Tables 3 (CIFAR-10) and 4 (ImageNet)
PAPER_RESULTS = {
    ('cifar_resnet32', 'cifar10'): [
        ('ResNet-32, all blocks', '92.3', '15.0 ± 0.0', '1.38E+08 ± 0.00E+00'),
        ('BlockDrop-32 (gamma = 5)', '91.3', '6.9 ± 1.6', '8.66E+07 ± 1.40E+07'),
    ],
    ('cifar_resnet110', 'cifar10'): [
        ('ResNet-110, all blocks', '93.2', '54.0 ± 0.0', '5.06E+08 ± 0.00E+00'),
        ('BlockDrop-110 (gamma = 10)', '93.6', '16.9 ± 3.7', '1.81E+08 ± 3.43E+07'),
    ],
    ('resnet101', 'in1k'): [
        ('ResNet-101, all blocks', '76.4', '33.0 ± 0.0', '1.56E+10 ± 0.00E+00'),
        ('BlockDrop (gamma = 5)', '76.4', '24.8 ± 1.0', '1.25E+10 ± 4.26E+08'),
    ],
}


# ---- checking the inputs ----

def check_repo_id(repo_id: str) -> str:
    """``ORG/NAME`` as the Hub accepts it, or a ValueError saying what is wrong."""
    if not isinstance(repo_id, str) or repo_id.count('/') != 1 or not all(repo_id.split('/')):
        raise ValueError(f"repo id '{repo_id}' is malformed: expected ORG/NAME, e.g. "
                         f"{hub_id('blockdrop_cifar_resnet32.cifar10')}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(f"repo id '{repo_id}' is malformed: {e}") from None
    return repo_id


def _base_model(model: BlockDropResNet) -> str:
    return model._model_args['base_model']


def _read_json(path: str, what: str) -> Any:
    """The JSON in ``path``, or a sentence naming the ``what`` JSON that is missing or broken."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f'{what} JSON not found: {path}')
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f'{what} JSON {path} is not valid JSON: {e}') from None


def read_eval_report(path: str, model: BlockDropResNet, base: bool = False) -> Dict[str, Any]:
    """A ``blockdrop eval --json`` report, checked to be of ``model`` (or, ``base=True``, of its base ResNet).

    The report must name the checkpoint's architecture (its base architecture for ``base``), have its K and
    the same full-model FLOPs (so a report of another base wrapped under the same entry is refused too).
    """
    report = _read_json(path, 'eval')
    missing = [k for k in REPORT_KEYS if not isinstance(report, dict) or k not in report]
    if missing:
        raise ValueError(f"eval JSON {path} is not a 'blockdrop eval --json' report: no {', '.join(missing)}")
    arch = model.pretrained_cfg['architecture']
    want, what = (_base_model(model), 'base ResNet') if base else (arch, 'architecture')
    if report['model'] != want:
        raise ValueError(f"eval JSON {path} is for model '{report['model']}', not for this checkpoint's {what} "
                         f"'{want}'")
    if report['num_blocks'] != model.num_blocks:
        raise ValueError(f"eval JSON {path} is for a model with K = {report['num_blocks']} blocks, this checkpoint "
                         f"has K = {model.num_blocks}")
    full = model.flops_table()[0].full
    if not math.isclose(report['full_flops'], full, rel_tol=1e-6):
        raise ValueError(f"eval JSON {path} was measured on another base network: its full model costs "
                         f"{report['full_flops']:.4E} FLOPs/image, this checkpoint's {full:.4E}")
    return report


def read_speed_report(path: str, model: BlockDropResNet) -> Dict[str, Any]:
    """A ``blockdrop eval --compare-full --json`` report of ``model``: its speed against the full ResNet."""
    report = read_eval_report(path, model)
    if report['policy'] != 'learned' or 'speedup_vs_full_fast' not in report:
        raise ValueError(f'eval JSON {path} has no timing of the learned policy against the fused full ResNet: '
                         f'make it with blockdrop eval --checkpoint ... --compare-full --json (on a CPU)')
    return report


def read_compare_report(path: str) -> Dict[str, Any]:
    """A ``blockdrop compare --json`` report (rows of label, top1, ms_per_image, blocks_mean)."""
    report = _read_json(path, 'compare')
    keys = ('label', 'top1', 'ms_per_image', 'blocks_mean')
    if (not isinstance(report, dict) or not isinstance(report.get('rows'), list) or not report['rows']
            or not all(isinstance(r, dict) and all(k in r for k in keys) for r in report['rows'])):
        raise ValueError(f"compare JSON {path} is not a 'blockdrop compare --json' report: it needs rows with "
                         f"{', '.join(keys)}")
    return report


def _speed_rows(reports: Sequence[Dict[str, Any]]) -> List[Dict[str, str]]:
    return [dict(batch=str(r.get('batch_size') or '?'), threads=str(r.get('threads') or '?'),
                 images=str(r['n_images']), split=r.get('split') or '?', ours=f"{r['images_per_s']:.0f}",
                 full=f"{r['full_fast_images_per_s']:.0f}", speedup=f"{r['speedup_vs_full_fast']:.2f}x")
            for r in reports]


def _compare_rows(report: Optional[Dict[str, Any]]) -> List[Dict[str, str]]:
    if not report:
        return []
    front = set(report.get('pareto') or ())
    return [dict(label=r['label'], top1=f"{r['top1']:.2f}", ms=f"{r['ms_per_image']:.3f}",
                 blocks=f"{r['blocks_mean']:.2f}", pareto='yes' if r['label'] in front else 'no')
            for r in report['rows']]


def _dataset(model: BlockDropResNet, reports: Sequence[Dict], override: Optional[str]) -> Dict[str, Any]:
    """The data set the model is for: ``--dataset``, else config notes, eval data, or num_classes."""
    def known(name: Optional[str]) -> Optional[Dict[str, Any]]:
        for tag, data in DATASETS.items():
            if name and name.rstrip('/') in (tag, data['hub_id']) or name and Path(name).name == tag:
                return dict(data, tag=tag)
        return None

    if override:
        return known(override) or dict(hub_id=override, name=override, split=None, num_images=None, tag=None)
    notes = model.pretrained_cfg.get('notes') or ()
    for name in [n[len('dataset: '):] for n in notes if n.startswith('dataset: ')] + [r.get('data') for r in reports]:
        if known(name):
            return known(name)
    by_classes = {10: 'cifar10', 100: 'cifar100', 1000: 'in1k'}
    if model.num_classes in by_classes:
        return dict(DATASETS[by_classes[model.num_classes]], tag=by_classes[model.num_classes])
    raise ValueError(f'cannot tell which data set this {model.num_classes}-class model is for: name its Hub id '
                     f'with --dataset')


# ---- the model card ----

def _result_row(report: Dict[str, Any], threshold: float, base_model: Optional[str] = None) -> Dict[str, str]:
    policy, k = report['policy'], report['num_blocks']
    if base_model:
        label = f'base `{base_model}` before BlockDrop, policy {policy}'
    elif policy == 'learned':
        label = 'this model, learned policy' + (
            f" (threshold {report['threshold']})" if report.get('threshold') not in (None, threshold) else '')
    elif policy == 'full':
        label = f'this model, all {k} blocks'
    else:
        label = f"this model, {policy} (k = {report.get('blocks')})"
    return dict(
        label=label, top1=f"{report['top1']:.2f}",
        blocks=f"{report['blocks_mean']:.2f} ± {report['blocks_std']:.2f}",
        flops=f"{report['flops_mean']:.3E} ± {report['flops_std']:.2E}",
        unique=str(report['unique_policies']), images=str(report['n_images']),
    )


def _split_spec(report: Dict[str, Any], dataset: Dict[str, Any]) -> str:
    split = report.get('split') or dataset.get('split') or 'test'
    total = dataset.get('num_images') if split == dataset.get('split') else None
    return f"{split}[:{report['n_images']}]" if total and report['n_images'] < total else split


def _registered_tag(arch: str, dataset: Dict[str, Any], repo_id: str) -> Optional[str]:
    """The timm 'entry.tag' whose ``hf_hub_id`` is ``repo_id``, if any: ``pretrained=True`` on it loads this repo."""
    name = f"{arch}.{dataset['tag']}" if dataset.get('tag') else None
    cfg = timm.models.get_pretrained_cfg(name) if name in timm.list_pretrained(arch) else None
    return name if cfg is not None and cfg.hf_hub_id == repo_id else None


def _eval_command(report: Dict[str, Any], dataset: Dict[str, Any]) -> str:
    """The ``blockdrop eval`` command that measures ``report`` again on a downloaded copy."""
    split = _split_spec(report, dataset)
    command = f"blockdrop eval --checkpoint DIR --data {dataset['hub_id']} --split {split.split('[')[0]} " \
              f"--policy {report['policy']}"
    if report.get('blocks') is not None:
        command += f" --blocks {report['blocks']}"
    if report['policy'] == 'learned' and report.get('threshold') is not None:
        command += f" --threshold {report['threshold']}"
    if split.endswith(']'):
        command += f" --max-samples {report['n_images']}"
    return command


def render_card(
        model: BlockDropResNet,
        repo_id: str,
        reports: Sequence[Dict[str, Any]] = (),
        base_reports: Sequence[Dict[str, Any]] = (),
        dataset: Optional[Dict[str, Any]] = None,
        license: Optional[str] = None,
        recipe: Optional[str] = None,
        train_commands: Sequence[str] = (),
        train_configs: Sequence[Dict[str, str]] = (),
        plots: Sequence[str] = (),
        template: Optional[str] = None,
        speed_reports: Sequence[Dict[str, Any]] = (),
        compare_report: Optional[Dict[str, Any]] = None,
) -> ModelCard:
    """The model card: Hub metadata (model-index from the learned-policy report) and the filled template; the
    speed-ups of ``speed_reports`` (eval --compare-full) and the rows of a ``compare_report`` when given."""
    cfg, args = model.pretrained_cfg, model._model_args
    dataset = dataset or _dataset(model, list(reports), None)
    threshold = model.threshold
    primary = next((r for r in reports if r['policy'] == 'learned' and r.get('threshold') == threshold), None)
    primary = primary or next((r for r in reports if r['policy'] == 'learned'), None)
    model_name = repo_id.split('/')[1]
    eval_results = None
    if primary is not None:
        eval_results = [EvalResult(
            task_type='image-classification', task_name='Image Classification',
            dataset_type=dataset['hub_id'], dataset_name=dataset['name'],
            dataset_split=_split_spec(primary, dataset),
            metric_type='accuracy', metric_name='Top-1 accuracy (%)', metric_value=primary['top1'],
        )]
    license = license or cfg.get('license') or 'unknown'
    card_data = ModelCardData(
        library_name='timm', pipeline_tag='image-classification', license=license, tags=list(TAGS),
        datasets=[dataset['hub_id']], model_name=model_name, eval_results=eval_results,
    )
    rows = ([primary] if primary else []) + [r for r in reports if r is not primary]
    results = [_result_row(r, threshold) for r in rows]
    results += [_result_row(r, threshold, _base_model(model)) for r in base_reports]
    if results and not base_reports and all(r['policy'] != 'full' for r in rows):
        results.append(dict(label=f'this model, all {model.num_blocks} blocks (FLOPs only, not evaluated)',
                            top1='–', blocks=f'{model.num_blocks:.2f} ± 0.00',
                            flops=f'{model.flops_table()[0].full:.3E} ± 0.00E+00', unique='1', images='–'))
    size = cfg['input_size']
    base_notes = [n[len('base: '):] for n in cfg.get('notes') or () if n.startswith('base: ')]
    first = rows[0] if rows else None
    split = _split_spec(first, dataset) if first else None
    kwargs = dict(
        repo_id=repo_id, model_name=model_name, architecture=cfg['architecture'],
        description=cfg.get('description') or '',
        base_model=_base_model(model), base_kwargs=args.get('base_kwargs') or None,
        base_note=base_notes[0] if base_notes else None, num_blocks=model.num_blocks,
        policy_model=args['policy_model'],
        policy_input=("the base ResNet's stem features (a head with no convolution of its own)"
                      if model.policy_reads_stem else f"the image average-pooled to {model.policy_img_size} px"
                      if model.policy_img_size else 'the full-resolution image'),
        threshold=threshold, alpha=model.alpha,
        params_total=f'{sum(p.numel() for p in model.parameters()) / 1e6:.2f}',
        params_base=f'{sum(p.numel() for p in model.base.parameters()) / 1e6:.2f}',
        params_policy=f'{sum(p.numel() for p in model.policy.parameters()) / 1e6:.3f}',
        input_size=f'{size[1]}x{size[2]} px', interpolation=cfg.get('interpolation'), crop_pct=cfg.get('crop_pct'),
        mean=tuple(cfg['mean']), std=tuple(cfg['std']), num_classes=model.num_classes,
        dataset_name=dataset['name'], dataset_id=dataset['hub_id'],
        registered_tag=_registered_tag(cfg['architecture'], dataset, repo_id),
        recipe=recipe, train_commands=list(train_commands), train_configs=list(train_configs),
        results=results, eval_split=split.split('[')[0] if split else None,
        eval_subset=bool(split and split.endswith(']')), eval_images=first['n_images'] if first else None,
        split_images=dataset.get('num_images'), full_flops=f'{model.flops_table()[0].full:.3E}',
        paper_rows=[dict(zip(('label', 'top1', 'blocks', 'flops'), row))
                    for row in PAPER_RESULTS.get((_base_model(model), dataset.get('tag')), [])],
        eval_command=_eval_command(first, dataset) if first else None, plots=list(plots),
        speed_rows=_speed_rows(speed_reports), compare_rows=_compare_rows(compare_report),
        compare=compare_report and dict(split=compare_report.get('split') or '?',
                                        images=compare_report.get('n_images') or '?',
                                        batch=compare_report.get('batch_size') or '?',
                                        threads=compare_report.get('threads') or '?'),
    )
    if template is not None and not Path(template).is_file():
        raise FileNotFoundError(f'model card template not found: {template}')
    template_str = Path(template).read_text(encoding='utf-8') if template else CARD_TEMPLATE.read_text(encoding='utf-8')
    return ModelCard.from_template(card_data, template_str=template_str, **kwargs)


# ---- the repo folder and the upload ----

def _extra_files(plots: Sequence[Path], configs: Sequence[Path]) -> Dict[str, Path]:
    """Plots and training configs to publish beside the model, by their name in the repo."""
    named = {}
    for file in list(plots) + list(configs):
        if not file.is_file():
            raise FileNotFoundError(f'file to publish not found: {file}')
        if file.name in named or file.name in _MODEL_FILES:
            raise ValueError(f"two files to publish are both named '{file.name}' ({file})")
        named[file.name] = file
    return named


def build_repo_folder(
        checkpoint: str,
        folder: str,
        repo_id: str,
        eval_jsons: Sequence[str] = (),
        base_eval_jsons: Sequence[str] = (),
        dataset: Optional[str] = None,
        license: Optional[str] = None,
        recipe: Optional[str] = None,
        train_commands: Sequence[str] = (),
        train_configs: Sequence[str] = (),
        plots: Sequence[str] = (),
        template: Optional[str] = None,
        speed_jsons: Sequence[str] = (),
        compare_json: Optional[str] = None,
) -> List[str]:
    """Write the Hub repo of ``checkpoint`` into ``folder`` (which must be empty or new); its file names."""
    check_repo_id(repo_id)
    model = load_model(checkpoint=checkpoint, require='blockdrop').eval()
    reports = [read_eval_report(p, model) for p in eval_jsons]
    base_reports = [read_eval_report(p, model, base=True) for p in base_eval_jsons]
    speed_reports = [read_speed_report(p, model) for p in speed_jsons]
    compare_report = read_compare_report(compare_json) if compare_json else None
    data = _dataset(model, reports, dataset)
    plot_files = sorted(Path(checkpoint).glob('*.png')) + [Path(p) for p in plots]
    extras = _extra_files(plot_files, [Path(p) for p in train_configs])
    out = Path(folder)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f'output folder {folder} exists and is not empty: remove it or choose another')

    # everything is checked and the card rendered before the first file is written
    notes = [n for n in model.pretrained_cfg.get('notes') or () if not n.startswith('dataset: ')]
    pretrained_cfg = dict(notes=[f"dataset: {data['hub_id']}"] + notes)
    if license:
        pretrained_cfg['license'] = license
    model.pretrained_cfg = dict(model.pretrained_cfg, **pretrained_cfg)
    configs = [dict(name=f.name, text=f.read_text(encoding='utf-8').strip()) for f in extras.values()
               if f not in plot_files]
    card = render_card(model, repo_id, reports, base_reports, data, license, recipe, train_commands, configs,
                       [f.name for f in plot_files], template, speed_reports, compare_report)

    out.mkdir(parents=True, exist_ok=True)
    timm.models.save_for_hf(model, out, model_config=dict(pretrained_cfg=pretrained_cfg), safe_serialization=True)
    for name, file in extras.items():
        shutil.copyfile(file, out / name)
    card.save(out / 'README.md')
    return sorted(p.name for p in out.iterdir())


def upload(folder: str, repo_id: str, private: bool = False, commit_message: Optional[str] = None):
    """Create ``repo_id`` if needed and upload ``folder`` to it with ``HfApi.upload_folder``."""
    api = HfApi(library_name='timm-blockdrop', library_version=__version__)
    with hub_upload_errors(repo_id):
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type='model')
        return api.upload_folder(repo_id=repo.repo_id, folder_path=folder, repo_type='model',
                                 commit_message=commit_message or f'Publish {repo_id.split("/")[1]}')


def publish(checkpoint: str, repo_id: str, dry_run: Optional[str] = None, private: bool = False,
            commit_message: Optional[str] = None, **kwargs) -> Dict[str, Any]:
    """Build the repo folder (in ``dry_run``, or a temporary one) and upload it unless ``dry_run``."""
    check_repo_id(repo_id)
    if dry_run:
        files = build_repo_folder(checkpoint, dry_run, repo_id, **kwargs)
        return dict(repo_id=repo_id, folder=dry_run, files=files, uploaded=False)
    with tempfile.TemporaryDirectory(prefix='blockdrop-publish-') as tmp:
        files = build_repo_folder(checkpoint, tmp, repo_id, **kwargs)
        info = upload(tmp, repo_id, private, commit_message)
    return dict(repo_id=repo_id, folder=None, files=files, uploaded=True, commit_url=getattr(info, 'commit_url', None))


# ---- command line ----

def add_publish_arguments(sub) -> None:
    p = sub.add_parser('publish', help='publish a BlockDrop checkpoint to the Hugging Face Hub with a model card')
    p.add_argument('--checkpoint', required=True, help='checkpoint folder in save_for_hf layout '
                                                       '(model.safetensors + config.json)')
    p.add_argument('--repo-id', required=True, help=f"Hub repo ORG/NAME, e.g. "
                                                    f"{hub_id('blockdrop_cifar_resnet32.cifar10')}")
    p.add_argument('--eval-json', action='append', default=[], metavar='EVAL.json',
                   help='a `blockdrop eval --checkpoint ... --json` report of this checkpoint (repeatable: '
                        'learned policy, --policy full, baselines); the learned one goes into model-index')
    p.add_argument('--base-eval-json', action='append', default=[], metavar='EVAL.json',
                   help='a `blockdrop eval --json` report of the base ResNet before BlockDrop (repeatable)')
    p.add_argument('--speed-json', action='append', default=[], metavar='EVAL.json',
                   help='a `blockdrop eval --compare-full --json` report of this checkpoint: its speed-up over the '
                        'fused full ResNet goes into the card (repeatable: one per batch size)')
    p.add_argument('--compare-json', metavar='COMPARE.json',
                   help='a `blockdrop compare --json` report: its rows (top-1, ms/image) go into the card')
    p.add_argument('--dataset', help='Hub id of the data set (default: from the config, the eval JSON or '
                                     'num_classes: cifar10, cifar100, imagenet-1k)')
    p.add_argument('--license', help="licence of the weights (default: the config's pretrained_cfg licence)")
    p.add_argument('--recipe', help='how it was trained, in a line (e.g. "curriculum, then joint finetuning")')
    p.add_argument('--train-config', action='append', default=[], metavar='YAML',
                   help='training config file(s): copied into the repo and shown in the card')
    p.add_argument('--train-command', action='append', default=[], metavar='CMD', help='training command(s)')
    p.add_argument('--plots', nargs='+', default=[], metavar='PNG',
                   help='plots to include (the *.png files in the checkpoint folder are included anyway)')
    p.add_argument('--card-template', help='model card template (default: hub_cards/blockdrop_model_card.md)')
    p.add_argument('--commit-message', default=None)
    p.add_argument('--private', action='store_true', help='create the Hub repo private')
    p.add_argument('--dry-run', metavar='FOLDER', help='write the repo folder here and do not upload')


def run_publish(args) -> Dict[str, Any]:
    result = publish(
        args.checkpoint, args.repo_id, dry_run=args.dry_run, private=args.private,
        commit_message=args.commit_message, eval_jsons=args.eval_json, base_eval_jsons=args.base_eval_json,
        dataset=args.dataset, license=args.license, recipe=args.recipe, train_commands=args.train_command,
        train_configs=args.train_config, plots=args.plots, template=args.card_template,
        speed_jsons=args.speed_json, compare_json=args.compare_json,
    )
    if result['uploaded']:
        print(f"uploaded {', '.join(result['files'])} to https://huggingface.co/{args.repo_id}"
              + (f" ({result['commit_url']})" if result.get('commit_url') else ''))
    else:
        print(f"dry run: wrote {', '.join(result['files'])} to {args.dry_run}; not uploaded. Load it with "
              f"timm.create_model('local-dir:{args.dry_run}', pretrained=True); upload it by rerunning "
              f"without --dry-run (or `hf upload {args.repo_id} {args.dry_run}`)")
    return result

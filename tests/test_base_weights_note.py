"""The model card records what the base ResNet started from (issue 14 item 5): a file, a timm tag, or nothing."""
from types import SimpleNamespace

import timm

import timm_blockdrop  # noqa: F401  (registers the models)
from timm_blockdrop.tools.hub import render_card
from timm_blockdrop.train.build import base_weights_note, build_model
from timm_blockdrop.train.config import load_config

from conftest import REPO

CL = REPO / 'recipes' / 'configs' / 'cifar10_resnet32_cl.yaml'
IMAGENET = REPO / 'recipes' / 'configs' / 'imagenet_resnet101_cl.yaml'


def test_a_trained_models_card_names_its_base_weight_file(tmp_path, shared):
    model = build_model(load_config(CL))
    timm.models.save_for_hf(model, tmp_path / 'm', safe_serialization=True)
    back = timm.create_model(f'local-dir:{tmp_path / "m"}', pretrained=True)
    card = str(render_card(back, 'someone/blockdrop-test'))
    base_line = next(line for line in card.splitlines() if 'Base ResNet' in line)
    assert 'started from the weight file resnet32-d509ac18.th' in base_line


def test_random_base_weights_are_said(tmp_path):
    config = load_config(IMAGENET, {'model': 'resnet18', 'base_pretrained': False})
    assert build_model(config).pretrained_cfg['notes'][-1] == \
        'base: started from random weights (base_pretrained: false)'


def test_a_timm_tag_is_named_with_its_hub_repo():
    config = load_config(IMAGENET)
    base = SimpleNamespace(pretrained_cfg=dict(architecture='resnet101', tag='tv_in1k',
                                               hf_hub_id='timm/resnet101.tv_in1k'))
    assert base_weights_note(config, base) == \
        "base: started from timm's pretrained resnet101.tv_in1k (hf-hub: timm/resnet101.tv_in1k)"

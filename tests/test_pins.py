"""Pins (issue 12): the private torch / timm APIs this package uses exist in the installed versions, and those
versions lie inside pyproject.toml's bounds. A failure names the API that has gone, so the bound can be fixed."""
import importlib
import re
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parent.parent / 'pyproject.toml'

# (where it is used, how to reach it)
PRIVATE_APIS = [
    ('models/blockdrop.py, models/cifar_resnet.py', 'timm.models._features', 'feature_take_indices'),
    ('models/checkpoints.py', 'timm.models._builder', 'resolve_pretrained_cfg'),
]


@pytest.mark.parametrize('used_in,module,name', PRIVATE_APIS, ids=[f'{m}.{n}' for _, m, n in PRIVATE_APIS])
def test_private_timm_api_exists(used_in, module, name):
    try:
        mod = importlib.import_module(module)
    except ImportError:
        pytest.fail(f'private API {module} (used in {used_in}) is gone in timm {version("timm")}: '
                    f'lower the timm pin in pyproject.toml or port the code')
    assert hasattr(mod, name), (f'private API {module}.{name} (used in {used_in}) is gone in timm '
                                f'{version("timm")}: lower the timm pin in pyproject.toml or port the code')


def test_private_torch_apis_of_the_fused_engine_exist():
    where = 'models/fused.py'
    op = getattr(torch.ops.mkldnn, '_convolution_pointwise', None)
    assert op is not None, (f'private API torch.ops.mkldnn._convolution_pointwise (used in {where}) is gone in torch '
                            f'{torch.__version__}: lower the torch pin in pyproject.toml or port the code')
    assert hasattr(op, 'binary'), (f'private API torch.ops.mkldnn._convolution_pointwise.binary (used in {where}) is '
                                   f'gone in torch {torch.__version__}: lower the torch pin or port the code')
    assert hasattr(torch._C._nn, 'mkldnn_reorder_conv2d_weight'), (
        f'private API torch._C._nn.mkldnn_reorder_conv2d_weight (used in {where}) is gone in torch '
        f'{torch.__version__}: lower the torch pin in pyproject.toml or port the code')


def _requirements():
    text = PYPROJECT.read_text()
    deps = re.search(r'^dependencies = \[(.*?)^\]', text, re.S | re.M).group(1)
    return {r.name: r for r in (Requirement(d) for d in re.findall(r'"([^"]+)"', deps))}


@pytest.mark.parametrize('package', ['torch', 'timm'])
def test_installed_versions_are_inside_the_pins(package):
    req = _requirements()[package]
    assert any(s.operator == '<' for s in req.specifier), f'{package} needs an upper bound in pyproject.toml'
    installed = version(package).split('+')[0]
    assert req.specifier.contains(installed, prereleases=True), (
        f'installed {package} {installed} lies outside pyproject.toml\'s "{req}"')


def test_plotting_is_an_extra():
    reqs = _requirements()
    assert 'matplotlib' not in reqs, 'matplotlib is for docs and plots only: the [plots] extra'
    text = PYPROJECT.read_text()
    assert re.search(r'^plots = \["matplotlib"\]', text, re.M)
    assert re.search(r'^dev = \[.*"timm-blockdrop\[plots\]"', text, re.M)

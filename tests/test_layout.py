"""The package layout is the architecture (issue 12): floors import only downwards, no cycles, no hidden imports.

Floors, lowest first:
  0. ``timm_blockdrop.errors``                       what a user can get wrong
  1. ``timm_blockdrop.models``, ``timm_blockdrop.data`` what a model is and how it runs; images in
  2. ``timm_blockdrop.train``                         how it is trained
  3. ``timm_blockdrop.tools``                         eval, bench, compare, publish, the Hub, the CLI
The package's ``__init__`` registers the models and re-exports floor 0-1 names only.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / 'timm_blockdrop'
FLOORS = {'errors': 0, 'models': 1, 'data': 1, 'train': 2, 'tools': 3}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _imports(path: Path):
    """(imported module, line, is_function_local) for every import of a timm_blockdrop module in ``path``."""
    tree = ast.parse(path.read_text())
    name = _module_name(path)
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    local_lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    local_lines.add(inner.lineno)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[:len(package.split('.')) - node.level + 1]
                target = '.'.join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ''
            targets = [target] if node.module else [f'{target}.{a.name}' for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for t in targets:
            if t == 'timm_blockdrop' or t.startswith('timm_blockdrop.'):
                out.append((t, node.lineno, node.lineno in local_lines))
    return out


def _floor(module: str):
    parts = module.split('.')
    return FLOORS.get(parts[1]) if len(parts) > 1 else None


MODULES = sorted(p for p in PACKAGE.rglob('*.py'))


def test_every_module_sits_on_a_floor():
    stray = [_module_name(p) for p in MODULES if p.parent == PACKAGE and p.name != '__init__.py'
             and p.stem not in FLOORS]
    assert not stray, f'modules outside the floors {sorted(FLOORS)}: {stray}'


@pytest.mark.parametrize('path', MODULES, ids=lambda p: _module_name(p))
def test_imports_go_down_only(path):
    own = _floor(_module_name(path))
    if own is None:  # the package __init__: registers models, re-exports floors 0-1
        own = 1
    upward = [(t, line) for t, line, _ in _imports(path) if (_floor(t) or 0) > own]
    assert not upward, f'{_module_name(path)} (floor {own}) imports upper floors: {upward}'


@pytest.mark.parametrize('path', MODULES, ids=lambda p: _module_name(p))
def test_no_function_local_imports_of_the_package(path):
    local = [(t, line) for t, line, is_local in _imports(path) if is_local]
    assert not local, f'{_module_name(path)} imports package modules inside functions: {local}'


def test_no_import_cycles():
    graph = {}
    names = {_module_name(p) for p in MODULES}
    for p in MODULES:
        deps = set()
        for t, _, is_local in _imports(p):
            while t and t not in names:  # 'pkg.mod.attr' -> 'pkg.mod'
                t = t.rpartition('.')[0]
            if t and t != _module_name(p):
                deps.add(t)
        graph[_module_name(p)] = deps
    # a package's __init__ importing its own submodules is not a cycle: drop edges into a module's own parents
    for mod, deps in graph.items():
        graph[mod] = {d for d in deps if not mod.startswith(d + '.')}
    state, stack, cycles = {}, [], []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, 'import cycles: ' + '; '.join(' -> '.join(c) for c in cycles)


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path):
    """The rules above can fail: a fake package with a cycle and a models -> train import is caught."""
    global PACKAGE
    pkg = tmp_path / 'timm_blockdrop'
    (pkg / 'models').mkdir(parents=True)
    (pkg / 'train').mkdir()
    (pkg / '__init__.py').write_text('')
    (pkg / 'models' / '__init__.py').write_text('')
    (pkg / 'train' / '__init__.py').write_text('')
    (pkg / 'models' / 'a.py').write_text('from .b import x\nfrom ..train.c import y\n')
    (pkg / 'models' / 'b.py').write_text('def f():\n    from .a import z\n')
    (pkg / 'train' / 'c.py').write_text('')
    old, PACKAGE = PACKAGE, pkg
    try:
        modules = sorted(pkg.rglob('*.py'))
        with pytest.raises(AssertionError, match='upper floors'):
            test_imports_go_down_only(pkg / 'models' / 'a.py')
        with pytest.raises(AssertionError, match='inside functions'):
            test_no_function_local_imports_of_the_package(pkg / 'models' / 'b.py')
        global MODULES
        old_modules, MODULES = MODULES, modules
        try:
            with pytest.raises(AssertionError, match='import cycles'):
                test_no_import_cycles()
        finally:
            MODULES = old_modules
    finally:
        PACKAGE = old

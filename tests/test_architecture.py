"""The package's layout is its architecture: stages import only the stages below them, with no cycles.

Read from the source with :mod:`ast` (nothing is imported): every ``import``/``from ... import`` of a
``bayesnlme`` module, at the top of a module or inside a function.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "bayesnlme"
MAX_LINES = 500

# Stages from the bottom up; a module may import its own stage and the stages below it.
STAGES = [
    ("base", ("bayesnlme.errors", "bayesnlme.atomic", "bayesnlme.datasets")),
    ("describe", ("bayesnlme.structural", "bayesnlme.spec", "bayesnlme.data", "bayesnlme.eda")),
    ("importers", ("bayesnlme.importers",)),
    ("build", ("bayesnlme.build",)),
    ("inference", ("bayesnlme.inference",)),
    ("evaluate", ("bayesnlme.evaluate",)),
    ("vpc", ("bayesnlme.vpc",)),
    ("workflows", ("bayesnlme.runner", "bayesnlme.sbc", "bayesnlme.covsearch", "bayesnlme.decision",
                   "bayesnlme.trial")),
    ("report", ("bayesnlme.report", "bayesnlme.qualify")),
    ("cli", ("bayesnlme.cli",)),
]
# Function-level imports of package modules are allowed only where a comment says why (PyMC is heavy):
# the command line loads a command's module when that command runs, and `bayesnlme.fit_model` loads PyMC
# on first use.
LAZY_ALLOWED = {"bayesnlme", "bayesnlme.cli"}


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _imports(name: str, path: Path):
    """(imported module, imported names, is top level, line) for each import of a bayesnlme module."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("bayesnlme"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in MODULES:     # `from pkg import module`
                    yield sub, [], id(node) in top, node.lineno
                else:
                    yield target, [alias.name], id(node) in top, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("bayesnlme"):
                    yield alias.name, [], id(node) in top, node.lineno


def _stage(name: str) -> int:
    best = None
    for i, (_, prefixes) in enumerate(STAGES):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                best = i
    return best


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        graph[name] = set()
        for target, _, _, _ in _imports(name, path):
            # importing a.b.c runs a and a.b first: count the package __init__ modules as well
            parts = target.split(".")
            for k in range(2, len(parts) + 1):
                t = ".".join(parts[:k])
                if t in MODULES and t != name and not name.startswith(t + "."):
                    graph[name].add(t)
    return graph


def test_every_module_has_a_stage():
    missing = [m for m in MODULES if m != "bayesnlme" and _stage(m) is None]
    assert not missing, f"modules outside every stage of STAGES: {missing}"


def test_no_import_cycle():
    graph = _graph()
    # Tarjan's strongly connected components
    index, low, on, stack, cycles, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_stages_import_only_downwards():
    upward = []
    for name, path in MODULES.items():
        if name == "bayesnlme":
            continue
        for target, _, _, line in _imports(name, path):
            if target == "bayesnlme":
                continue   # the package itself (its version, datasets)
            if _stage(target) is not None and _stage(target) > _stage(name):
                upward.append(f"{path.relative_to(ROOT.parent)}:{line} imports {target}")
    assert not upward, "imports from a higher stage:\n" + "\n".join(upward)


def test_imports_at_the_top():
    lazy = [f"{path.relative_to(ROOT.parent)}:{line} imports {target}"
            for name, path in MODULES.items() if name not in LAZY_ALLOWED
            for target, _, top, line in _imports(name, path) if not top]
    assert not lazy, "package imports inside functions:\n" + "\n".join(lazy)


def test_no_private_name_from_another_module():
    private = [f"{path.relative_to(ROOT.parent)}:{line} takes {n} from {target}"
               for name, path in MODULES.items()
               for target, names, _, line in _imports(name, path) for n in names
               if n.startswith("_") and n != "__version__" and target != name]
    assert not private, "private names used across modules:\n" + "\n".join(private)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name):
    n = len(MODULES[name].read_text().splitlines())
    assert n <= MAX_LINES, f"{MODULES[name].relative_to(ROOT.parent)} has {n} lines (at most {MAX_LINES})"


def test_command_line_code_lives_in_cli():
    outside = [str(path.relative_to(ROOT.parent)) for name, path in MODULES.items()
               if not name.startswith("bayesnlme.cli") and
               any(isinstance(n, ast.Attribute) and n.attr in ("add_parser", "add_subparsers", "ArgumentParser")
                   for n in ast.walk(ast.parse(path.read_text())))]
    assert not outside, f"argparse code outside bayesnlme/cli: {outside}"


def test_every_subpackage_is_installed():
    """pyproject.toml lists every subpackage, or a fresh install would miss it."""
    import tomllib

    listed = set(tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT.parent).parts) for p in ROOT.rglob("__init__.py")}
    assert on_disk <= listed, f"subpackages missing from pyproject.toml: {sorted(on_disk - listed)}"


def test_every_module_is_committed():
    """No module of the package is ignored by git (a fresh clone would lack it)."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT.parent / ".git").exists():
        pytest.skip("not a git checkout")
    files = [str(p.relative_to(ROOT.parent)) for p in MODULES.values()]
    ignored = subprocess.run(["git", "check-ignore", *files], cwd=ROOT.parent, capture_output=True, text=True).stdout
    assert not ignored.split(), f"ignored by .gitignore: {ignored.split()}"


def test_no_branch_on_a_likelihood_family_name_outside_spec():
    """What a likelihood family does is asked of its family object (bayesnlme.spec.families), not decided by
    comparing ``.likelihood`` with a family name in the modules that use it."""
    found = []
    for name, path in MODULES.items():
        if name.startswith("bayesnlme.spec"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute)
                    and node.left.attr == "likelihood"):
                found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}")
    assert not found, "branches on .likelihood (ask m.family instead):\n" + "\n".join(found)


def test_every_family_answers_for_itself():
    """Each family object has its names, draw, VPC kind, residual and report line (one object per family)."""
    import numpy as np

    from bayesnlme.spec.families import FAMILIES
    from bayesnlme.spec.observation import ObservationModel

    rng = np.random.default_rng(0)
    f = np.full((2, 3), 0.5)
    for name, family in FAMILIES.items():
        m = ObservationModel(likelihood=name, categories=3)
        assert family.name == name and m.family is family
        assert family.vpc in ("continuous", "categorical", "kaplan-meier")
        assert family.residual in ("npde", "randomized PIT") and (family.residual == "npde") == family.continuous
        params = {"cutpoints": np.array([[-1.0, 1.0]] * 2), "phi": np.array([2.0, 2.0])}
        y = family.draw(m, f, np.full((2, 3), 0.1), params, rng)
        assert y.shape == f.shape
        assert np.isnan(y).all() == family.event_time
        assert m.output in family.equation(m)

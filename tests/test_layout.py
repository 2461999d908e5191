"""The package's floor plan: no import cycle between sepico's modules (function-level imports
counted too), and kernels/ imports nothing from sepico."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules(package: str) -> dict[str, Path]:
    found = {}
    for path in (ROOT / package).rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (a package's ``__init__`` only
    where the name imported is not one of its submodules)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_in_sepico():
    modules = _modules("sepico")
    graph = {}
    for name, path in modules.items():
        # a module importing from its own package's __init__ (re-exports) is no cycle of the plan
        graph[name] = {t for t in _imports(name, path, modules) if not name.startswith(t + ".")}
    assert _cycles(graph) == []
    # the checker finds a cycle where there is one
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_kernels_import_nothing_from_sepico():
    modules = _modules("kernels") | _modules("sepico")
    for name, path in _modules("kernels").items():
        assert not {t for t in _imports(name, path, modules) if t.startswith("sepico")}, name


def test_configs_are_package_data():
    """The configs live in the package (a wheel carries them: setup.py's package_data), and the
    top-level configs/ the README names is a link to them."""
    import fnmatch

    from sepico.demo import DEFAULT_CONFIG

    package = ROOT / "sepico"
    assert DEFAULT_CONFIG.is_file() and DEFAULT_CONFIG.parent == package / "configs"
    assert (ROOT / "configs").resolve() == package / "configs"
    setup = (ROOT / "setup.py").read_text()
    pattern = 'package_data={"sepico": ["configs/*.toml"]}'
    assert pattern in setup
    tomls = sorted(p.relative_to(package).as_posix() for p in (package / "configs").iterdir())
    assert len(tomls) >= 7 and all(fnmatch.fnmatch(t, "configs/*.toml") for t in tomls)


def test_bench_scripts_run_as_modules_without_path_edits():
    """bench/ runs as `python -m bench.NAME` from the checkout: no file edits sys.path, and none
    starts another one by its file path."""
    for path in sorted((ROOT / "bench").glob("*.py")):
        text = path.read_text()
        assert "sys.path" not in text, path.name
        assert not re.search(r"\[[^\]]*\"bench/\w+\.py\"", text), path.name


# The floors of sepico/__init__.py, lowest first: a module imports from its own floor and those
# below, never from one above (function-level imports counted too). "sepico" is the package's
# __init__ alone.
FLOORS = [
    ("sepico", "sepico.errors", "sepico.files", "sepico.pages"),
    ("sepico.reference", "sepico.labels", "sepico.losses", "sepico.estimator"),
    ("sepico.method",),
    ("sepico.models", "sepico.data"),
    ("sepico.evaluation",),
    ("sepico.train", "sepico.card"),
    ("sepico.convert", "sepico.predict", "sepico.plot", "sepico.demo", "sepico.ablation", "sepico.cli"),
]


def _floor(module: str) -> int:
    best = None
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            inside = module == prefix or (prefix != "sepico" and module.startswith(prefix + "."))
            if inside and (best is None or len(prefix) > best[1]):
                best = (level, len(prefix))
    assert best is not None, f"{module} is on no floor: add it to FLOORS (and to sepico/__init__.py's plan)"
    return best[0]


def test_no_import_runs_up_a_floor():
    modules = _modules("sepico")
    upward = []
    for name, path in modules.items():
        for target in _imports(name, path, modules):
            if _floor(target) > _floor(name):
                upward.append(f"{name} (floor {_floor(name)}) imports {target} (floor {_floor(target)})")
    assert upward == [], upward

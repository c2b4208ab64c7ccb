"""The design's import rule (docs/design.md): flows -> pipeline -> (models, scoring) -> catalog,
and Prefect only in flows/. Read from the source with ast, so a lazy import inside a function
counts as much as one at the top of a file."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Layer of each package: a module may import its own package and the layers below it. The
# root package (python -m winnow, the docs generator) is the entry point above them all.
LAYERS = {"winnow": 4, "flows": 3, "pipeline": 2, "review": 2, "models": 1, "scoring": 1, "catalog": 0}
# The real exceptions (docs/design.md): importing module or package -> imported module or package.
EXCEPTIONS = {
    # The base every layer uses: the one-line error, and references to model files.
    ("*", "winnow.models.errors"),
    ("winnow.scoring", "winnow.models.sources"),
    ("winnow.catalog.manifest", "winnow.models.sources"),
    # Scorers that read pixels (a detector, the perceptual hash) see the very bytes the catalog
    # stores (the generator's rounding).
    ("winnow.scoring.nudenet", "winnow.models.generator"),
    ("winnow.scoring.phash", "winnow.models.generator"),
    # The bundled models are trained and evaluated with scoring's loaders: one loading path.
    ("winnow.models.shapes", "winnow.scoring"),
    # The config types a manifest is made from, for type checking only (under TYPE_CHECKING).
    ("winnow.catalog.manifest", "winnow.pipeline"),
}


def packages() -> dict[str, Path]:
    """The installed packages (``winnow``, ``winnow.flows``, ...) and their folders, as
    pyproject.toml maps them."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return {name: REPO / folder for name, folder in config["tool"]["setuptools"]["package-dir"].items()}


def modules() -> dict[str, Path]:
    """Every library module by its import name (``winnow.catalog.query``)."""
    found = {}
    for package, folder in packages().items():
        for path in sorted(folder.rglob("*.py")):
            name = ".".join([package, *path.relative_to(folder).with_suffix("").parts])
            found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path) -> set[str]:
    """Absolute module names imported anywhere in ``path`` (``from winnow import x`` as ``winnow.x``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            if node.module == "winnow":
                names.update(f"winnow.{alias.name}" for alias in node.names)
            else:
                names.add(node.module)
    return names


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 and parts[1] in LAYERS else LAYERS["winnow"]


def within(module: str, prefix: str) -> bool:
    return prefix == "*" or module == prefix or module.startswith(prefix + ".")


def upward_imports(found: dict[str, Path]) -> tuple[list[str], set[tuple[str, str]]]:
    """Imports of the ``found`` modules that break the rule and no exception allows, and the
    exceptions used."""
    broken, used = [], set()
    for module, path in found.items():
        for target in imports(path):
            if target.split(".")[0] == "prefect" and module.split(".")[1:2] != ["flows"]:
                broken.append(f"{module} imports {target}: Prefect belongs in flows/")
            if target.split(".")[0] != "winnow" or target.split(".")[1:2] == module.split(".")[1:2]:
                continue  # another library, or the module's own package
            if layer(target) < layer(module):
                continue
            allowed = {e for e in EXCEPTIONS if within(module, e[0]) and within(target, e[1])}
            used |= allowed
            if not allowed:
                broken.append(f"{module} imports {target}")
    return broken, used


def test_every_package_has_a_layer():
    named = {name.split(".")[-1] for name in packages()}
    assert named == set(LAYERS), "a new package needs its layer in LAYERS and in docs/design.md"


def test_imports_go_one_way_and_prefect_stays_in_flows():
    broken, used = upward_imports(modules())
    assert broken == []
    assert used == EXCEPTIONS  # an exception nothing needs any more goes from here and the design


def test_the_check_sees_upward_imports(tmp_path):
    sources = {
        "winnow.catalog.bad": "def f():\n    from winnow.pipeline import shard\n",  # a lazy one too
        "winnow.models.worse": "import prefect.flows\nfrom winnow.models.errors import WinnowError\n",
        "winnow.scoring.fine": "from winnow.catalog.schema import Row\nfrom winnow import models\n",
    }
    found = {}
    for module, text in sources.items():
        found[module] = tmp_path / f"{module}.py"
        found[module].write_text(text)
    broken, used = upward_imports(found)
    assert sorted(broken) == [
        "winnow.catalog.bad imports winnow.pipeline",
        "winnow.models.worse imports prefect.flows: Prefect belongs in flows/",
        "winnow.scoring.fine imports winnow.models",
    ]
    assert used == set()  # its own package's errors module is no exception


def test_cli_start_up_imports_no_heavy_library():
    # `winnow --help` stays fast: commands import these inside, when they run.
    heavy = ["torch", "diffusers", "prefect", "pandas", "fastapi", "duckdb"]
    code = f"import sys, winnow.flows.cli; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.split() == []

"""The package layout keeps its shape: imports run one way (kernels < model < attention < runtime
< judging < demo < train < app), the pure tournament and reward code imports no model, and the
code stays readable (line widths, module and function sizes). Imports are read with ast, so no
module is executed."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"engine": "kojudge", "kernels": "kojudge.kernels", "train": "kojudge.train"}
# Lowest first; a module may import its own layer and those below. demo runs the judging protocols
# on its synthetic task, so it sits just above them.
LAYERS = ["kojudge.utils", "kojudge.kernels", "kojudge.model", "kojudge.attention",
          "kojudge.runtime", "kojudge.judging", "kojudge.demo", "kojudge.train", "kojudge.app",
          "kojudge"]


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


MODULES = modules()


def layer(module: str) -> int:
    """The index of the most specific layer that `module` belongs to."""
    matches = [i for i, name in enumerate(LAYERS) if module == name or module.startswith(name + ".")]
    return max(matches, key=lambda i: len(LAYERS[i]))


def project_imports(path: Path) -> list[tuple[ast.stmt, str, bool]]:
    """(statement, imported kojudge module, whether it runs at import time) for each import."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` blocks count as top level (they never run)
        if isinstance(node, ast.If):
            top_level.update(id(child) for child in node.body)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kojudge"):
            names = [node.module]
            if node.module in ("kojudge", "kojudge.kernels"):
                # `from kojudge.kernels import onednn` imports a module, not a name
                names += [f"{node.module}.{a.name}" for a in node.names
                          if f"{node.module}.{a.name}" in MODULES]
            found += [(node, name, id(node) in top_level) for name in names[-1:]]
        elif isinstance(node, ast.Import):
            found += [(node, a.name, id(node) in top_level) for a in node.names
                      if a.name.startswith("kojudge")]
    return found


def test_every_module_is_in_a_layer():
    for module in MODULES:
        assert layer(module) is not None


def test_imports_run_one_way():
    upward = []
    for module, path in MODULES.items():
        if module == "kojudge":
            continue  # the public API re-exports every layer
        for node, target, _ in project_imports(path):
            if layer(target) > layer(module):
                upward.append(f"{path.relative_to(ROOT)}:{node.lineno}: {module} imports {target}")
    assert not upward, "\n".join(upward)


def test_function_level_imports_only_for_optional_dependencies_and_say_why():
    unexplained = []
    for path in MODULES.values():
        lines = path.read_text().splitlines()
        for node, target, top_level in project_imports(path):
            if not top_level and not lines[node.lineno - 2].strip().startswith("#"):
                unexplained.append(f"{path.relative_to(ROOT)}:{node.lineno}: {target}")
    assert not unexplained, "\n".join(unexplained)


def imported_closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        for _, target, _ in project_imports(MODULES[current]):
            if target not in seen and target in MODULES:
                seen.add(target)
                todo.append(target)
    return seen


@pytest.mark.parametrize("module", ["kojudge.judging.tournament", "kojudge.train.rewards"])
def test_the_pure_tournament_and_reward_code_imports_no_model(module):
    heavy = {m for m in imported_closure(module)
             if layer(m) in (LAYERS.index("kojudge.kernels"), LAYERS.index("kojudge.model"),
                             LAYERS.index("kojudge.attention"), LAYERS.index("kojudge.runtime"))}
    assert not heavy


# ---- density ------------------------------------------------------------------------------------

def source_lines() -> dict[Path, list[str]]:
    return {path: path.read_text().splitlines() for path in MODULES.values()}


def test_few_lines_over_100_characters():
    lines = [line for text in source_lines().values() for line in text]
    wide = [line for line in lines if len(line) > 100]
    assert len(wide) <= 0.04 * len(lines), f"{len(wide)} of {len(lines)} lines"


def test_no_module_over_300_lines():
    big = {str(p.relative_to(ROOT)): len(text) for p, text in source_lines().items() if len(text) > 300}
    assert not big


def is_exempt(node: ast.FunctionDef) -> bool:
    """Triton kernels are one function by nature; so is an argparse set-up."""
    triton = any("triton" in ast.unparse(d) for d in node.decorator_list)
    calls = [n for n in ast.walk(node) if isinstance(n, ast.Call)]
    parser = sum(1 for c in calls if ast.unparse(c.func).endswith("add_argument")) > len(calls) / 3
    return triton or parser


def test_no_function_over_50_lines():
    long = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not is_exempt(node):
                size = node.end_lineno - node.lineno + 1
                if size > 50:
                    long.append(f"{path.relative_to(ROOT)}:{node.name} ({size} lines)")
    assert not long


def test_engine_step_reads_in_a_glance():
    tree = ast.parse(MODULES["kojudge.runtime.engine"].read_text())
    step = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "step")
    assert step.end_lineno - step.lineno + 1 <= 25


def test_the_scheduler_never_indexes_the_pools_tables():
    tree = ast.parse(MODULES["kojudge.runtime.scheduler"].read_text())
    private = [ast.unparse(n) for n in ast.walk(tree)
               if isinstance(n, ast.Attribute) and n.attr.startswith("_")
               and ast.unparse(n.value).endswith("cache")]
    subscripts = [ast.unparse(n) for n in ast.walk(tree)
                  if isinstance(n, ast.Subscript) and "cache." in ast.unparse(n.value)]
    assert not private and not subscripts


def test_one_ceil_div():
    """Rounding up is kojudge.utils.ceil_div (triton.cdiv in kernels), not `-(-a // b)` inline."""
    utils = MODULES["kojudge.utils"]
    idiom = [f"{p.relative_to(ROOT)}:{i}" for p, text in source_lines().items() if p != utils
             for i, line in enumerate(text, 1) if "-(-" in line.replace(" ", "")]
    assert not idiom


def shape(node: ast.expr) -> str:
    """An expression with its names, attributes and constants blanked out."""
    class Blank(ast.NodeTransformer):
        def visit_Name(self, n):
            return ast.Name(id="_", ctx=ast.Load())

        def visit_Constant(self, n):
            return ast.Constant(value=0)

        def visit_Attribute(self, n):
            self.generic_visit(n)
            n.attr = "_"
            return n

    return ast.dump(Blank().visit(ast.parse(ast.unparse(node), mode="eval")))


def test_no_parallel_assignment_of_unrelated_values():
    """`a, b = x, y` only where x and y are the same expression on different things (q and k,
    one tensor per side); never to store unrelated state (`self.a, self.b = a, b`)."""
    found = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Tuple)
                    and isinstance(node.value, ast.Tuple)):
                continue
            attributes = all(isinstance(t, ast.Attribute) for t in node.targets[0].elts)
            if attributes or len({shape(v) for v in node.value.elts}) > 1:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "\n".join(found)

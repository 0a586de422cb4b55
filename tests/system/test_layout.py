"""The layout docs/architecture.md describes, kept true: no import cycles, tests that mirror the core
module for module and stand alone. (The layers themselves are import-linter's contracts in
pyproject.toml, checked by `lint-imports` in ./scripts/test.)"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "clipsearch"
TESTS = ROOT / "tests"

WITHOUT_TESTS_OF_THEIR_OWN = {
    "config.py": "frozen records and defaults, each tested where it is used (CaptionConfig.check: model/test_captions)",
    "errors.py": "the exception tree; its HTTP statuses are tested in tests/app/test_errors.py",
    "client.py": "the typed HTTP client, tested against the real server throughout tests/app/",
    "index/topk.py": "the one result record (scores and ids)",
    "ingest/fusing.py": "the fused build's caption vectors and fused index, tested through the build in "
                        "tests/features/test_fusion.py (each captioned image's caption vector stored; an approximate "
                        "image index gets a fused index of the same kind, searched as the exact one)",
    "ingest/config.py": "BuildConfig, a frozen record; the indexer's flags are tested into it in indexer/test_cli",
    "model/graphs.py": "CUDA-graph capture, which needs a GPU: tested in model/test_encoder (gpu-marked)",
}
"""Core modules that have no behaviour of their own to test, or whose tests need what their own
file cannot hold, each with where it is covered."""


def core_modules() -> list[str]:
    return sorted(str(path.relative_to(CORE)) for path in CORE.rglob("*.py") if path.name != "__init__.py")


def test_every_core_module_has_its_test_file_or_says_why_not() -> None:
    missing = []
    for module in core_modules():
        package, _, name = module.rpartition("/")
        mirror = TESTS / package / f"test_{name}"
        if not mirror.is_file() and module not in WITHOUT_TESTS_OF_THEIR_OWN:
            missing.append(f"{module}: no {mirror.relative_to(ROOT)}")
    assert not missing, missing
    assert set(WITHOUT_TESTS_OF_THEIR_OWN) <= set(core_modules()), "an exemption names a module that is gone"


def test_no_module_imports_itself_through_others() -> None:
    """Counting lazy imports inside functions and imports under TYPE_CHECKING, as import-linter does."""
    graph = grimp.build_graph("clipsearch", "app", "indexer")
    cycles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain is not None:
                cycles.append(" → ".join((module, *chain)))
    assert not cycles, cycles


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_test_imports_another_test_module_or_the_benchmarks() -> None:
    offending = []
    for path in TESTS.rglob("*.py"):
        for module in imported_modules(path):
            parts = module.split(".")
            if parts[0] == "bench" or (parts[0] == "tests" and parts[-1].startswith("test_")):
                offending.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not offending, offending


def test_test_helpers_live_in_the_support_package_only() -> None:
    helpers = [str(path.relative_to(ROOT)) for path in TESTS.rglob("*.py")
               if not path.name.startswith("test_") and path.name not in ("__init__.py", "conftest.py")
               and path.parent.name != "support"]
    assert helpers == []

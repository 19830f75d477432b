"""The import rules of docs/architecture.md, checked by walking every module's
imports with `ast` (TYPE_CHECKING-only and function-local imports count too).

A rule broken here is a design problem, not a test problem: move what the
importer needs to where it may take it from (the Node or the protocol)."""

from __future__ import annotations

import ast
from pathlib import Path

from realtime import server

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("endpoints", "events", "store", "transport")
# The four socket channels and their base: only endpoints/ (and the app factory) may import them.
SOCKETS = {endpoint.__module__.removeprefix("realtime.") for _, endpoint in server.SOCKETS} | {"endpoints.base"}
# The HTTP routes, every other module of endpoints/: they never import a socket channel.
HTTP_ROUTES = {
    f"endpoints.{path.stem}" for path in (ROOT / "endpoints").glob("*.py") if path.stem != "__init__"
} - SOCKETS


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    modules = {module_name(p): p for p in ROOT.glob("*.py")}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            modules[module_name(path)] = path
    return modules


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every project module `name` imports, wherever the import statement sits."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from events.node import hub` imports the module events.node.hub.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def has_code(path: Path) -> bool:
    """More than a docstring (and `from __future__`): a package `__init__` that exports something."""
    body = ast.parse(path.read_text(), str(path)).body
    return any(
        not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant))
        and not (isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__")
        for stmt in body
    )


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    # An empty package `__init__` is no edge worth checking; one with code (transport/'s exports) is.
    return {
        name: {t for t in imports_of(name, path, known) if modules[t].name != "__init__.py" or has_code(modules[t])}
        for name, path in modules.items()
    }


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def forbidden(importer: str, imported: str) -> str | None:
    if under(importer, "store") and not under(imported, "store"):
        if any(under(imported, p) for p in ("events", "endpoints", "transport")):
            return "store/ imports no broker, socket or transport"
    if under(importer, "events") and under(imported, "endpoints"):
        return "events/ imports nothing from endpoints/"
    if under(importer, "transport") and (under(imported, "events") or under(imported, "endpoints")):
        return "transport/ imports neither events/ nor endpoints/"
    if under(importer, "events.protocol") and (under(imported, "store") or under(imported, "events.node")):
        return "the protocol imports neither the store nor the Node"
    if imported in SOCKETS and not under(importer, "endpoints") and importer != "server":
        return "only endpoints/ and the app factory import a socket channel"
    if importer in HTTP_ROUTES and imported in SOCKETS:
        return "HTTP routes never import a socket channel"
    return None


def test_no_forbidden_edge() -> None:
    broken = sorted(
        f"{importer} -> {imported}: {why}"
        for importer, targets in graph().items()
        for imported in targets
        if (why := forbidden(importer, imported))
    )
    assert not broken, "\n".join(broken)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_the_checks_see_a_broken_rule() -> None:
    """The walker finds what it is meant to: a planted loop and planted edges."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert forbidden("store.messages", "events.node.hub")
    assert forbidden("events.node.scheduler", "endpoints.consultation")
    assert forbidden("events.protocol.chat", "store.streams")
    assert forbidden("endpoints.api", "endpoints.chat")
    assert forbidden("embedding", "endpoints.chat")
    assert forbidden("endpoints.chat", "events.node.node") is None
    assert forbidden("store.messages", "transport")
    assert forbidden("transport.drain", "events.node.node")
    assert forbidden("endpoints.files", "endpoints.base")
    edges = graph()
    assert "events.node.broker" in edges["events.node.redis_broker"]
    assert "endpoints.base" in edges["endpoints.chat"]
    # transport/__init__ exports the socket side: importing it is an edge like any other.
    assert "transport" in edges["endpoints.base"]
    assert {"endpoints.chat", "endpoints.base"} <= SOCKETS and "endpoints.api" in HTTP_ROUTES


def private_imports(path: Path) -> list[str]:
    """Imports of a library's private module (`broadcaster._backends...`): its public API only."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        found += [n for n in names if n != "__future__" and any(p.startswith("_") for p in n.split("."))]
    return found


def test_libraries_are_used_through_their_public_modules() -> None:
    broken = {name: found for name, path in project_modules().items() if (found := private_imports(path))}
    assert broken == {}
    planted = ROOT / "tests" / "data" / "private_import_example.py"
    assert private_imports(planted) == ["broadcaster._backends.base"]

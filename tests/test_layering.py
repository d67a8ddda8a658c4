"""Dependency direction: mesh imports neither node nor storage; storage never imports node;
only mesh imports libp2p (the node's torch-free imports are checked in test_jobs and test_worker)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "mesh": ("poolai.node", "poolai.storage"),
    "storage": ("poolai.node",),
}


def imports_of(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_dependency_direction():
    violations = []
    for package, banned in FORBIDDEN.items():
        for path in (ROOT / package).rglob("*.py"):
            for name in imports_of(path):
                if name.startswith(banned):
                    violations.append(f"{path.relative_to(ROOT)} imports {name}")
    assert violations == []


def test_mesh_is_the_only_libp2p_user_outside_host():
    users = [
        str(p.relative_to(ROOT))
        for pkg in ("node", "storage")
        for p in (ROOT / pkg).rglob("*.py")
        if any(n == "libp2p" or n.startswith("libp2p.") for n in imports_of(p))
    ]
    assert users == []

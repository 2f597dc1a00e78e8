"""The rooms of src/qhpc import each other the way ARCHITECTURE.md says.

- ``broker`` never imports ``api``; nothing below ``api`` imports it (only ``api``
  itself and the command line do);
- ``resources`` import nothing of qhpc but ``qhpc.resources`` (and the shared
  bottom modules, ``qhpc.errors``, ``qhpc.envvars``, ``qhpc.files``, ``qhpc.logcontext``
  and ``qhpc.states``);
- the bottom modules import nothing of qhpc;
- ``session`` (the user's end of a session) imports only ``resources`` and the bottom;
  the rooms above it (``program``, ``runtime``, ``api``, ``broker``, the command line)
  reach it, and the two wire protocols it holds are imported by both their ends
  from there, downward (see ``SESSION_MAY_IMPORT``);
- ``client`` (the REST client) imports neither ``program`` nor ``session``: the
  programming model builds on it, not the reverse;
- no two modules import each other, directly or round a loop (``KNOWN_CIRCLES`` lists
  the ones still being untangled);
- ``api``, ``broker`` and ``web`` reach another room only through its public surface
  (``from qhpc.ROOM import NAME``), never a module inside it; nor does the
  command line reach ``api`` or ``broker`` any other way;
- ``web`` (the console, mounted by ``api``) sits below ``api``: it never imports it,
  and, like ``api``, never holds the broker's store;
- ``proxy`` (the vendor proxy, served by ``api``) imports only ``resources``,
  ``security`` and the bottom: it decides and forwards, the broker books (``api``
  joins the two), so it never reaches the store or the broker.

Imports are read with ``ast`` (also those inside functions and ``TYPE_CHECKING``
blocks), so a violation fails here before anyone runs the code.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "src" / "qhpc"
#: modules at the bottom of the graph, importable from anywhere
BOTTOM = {"qhpc", "qhpc.errors", "qhpc.envvars", "qhpc.files", "qhpc.logcontext", "qhpc.states"}

#: the one stated exception to "through the public surface": the two wire protocols
#: (ZeroMQ fast path, direct channel) are modules of the session room that both ends
#: share; their frame constants clash by name (HELLO, RESULT …), so each serving side
#: imports its protocol module rather than flat names; (importing file, imported module)
PROTOCOL_IMPORTS = {
    ("api/fastpath.py", "qhpc.session.fastpath"),
    ("broker/dispatch.py", "qhpc.session.direct"),
}
#: known imports of a module inside another room, each to be replaced by the room's
#: public surface (none left)
KNOWN_DEBT: set[tuple[str, str]] = set()

#: what the session room may import: it sits low, under everything that opens a session
SESSION_MAY_IMPORT = {"session", "resources"}

#: import circles (sets of files, relative to src/qhpc) tolerated while being untangled:
#: none left; a circle not listed fails the test
KNOWN_CIRCLES: list[frozenset[str]] = []


@dataclass(frozen=True)
class Import:
    file: str  # relative to src/qhpc
    module: str  # absolute, e.g. qhpc.broker.service

    @property
    def room(self) -> str:
        """The room of the importing file: its first path part (``cli/jobs.py`` → ``cli``)."""
        return self.file.split("/")[0].removesuffix(".py")

    @property
    def target(self) -> str:
        """The room imported: ``qhpc.broker.service`` → ``broker``."""
        parts = self.module.split(".")
        return parts[1] if len(parts) > 1 else ""


def imports_in(relative: str, text: str) -> list[Import]:
    """The qhpc imports of the file ``relative`` (to src/qhpc) whose source is ``text``."""
    package = ["qhpc", *Path(relative).parent.parts]
    found = []
    for node in ast.walk(ast.parse(text, relative)):
        if isinstance(node, ast.Import):
            found += [Import(relative, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            for alias in node.names:  # ``from qhpc.resources import local`` names a module
                inner = SOURCE.parent.joinpath(*module.split("."), alias.name)
                is_module = inner.with_suffix(".py").is_file() or inner.is_dir()
                found.append(Import(relative, f"{module}.{alias.name}" if is_module else module))
    return [i for i in found if i.module == "qhpc" or i.module.startswith("qhpc.")]


def all_imports() -> list[Import]:
    return [
        i
        for path in sorted(SOURCE.rglob("*.py"))
        for i in imports_in(path.relative_to(SOURCE).as_posix(), path.read_text(encoding="utf-8"))
    ]


def test_the_source_tree_is_where_the_test_looks() -> None:
    rooms = {i.room for i in all_imports()}
    assert {"api", "broker", "resources", "runtime", "program", "cli", "web"} <= rooms


def test_nothing_below_api_imports_api() -> None:
    wrong = [i for i in all_imports() if i.target == "api" and i.room not in ("api", "cli")]
    assert not wrong, "only qhpc.api itself and the command line may import qhpc.api: " + (
        ", ".join(f"{i.file} imports {i.module}" for i in wrong)
    )


def test_only_the_api_mounts_the_web_room() -> None:
    wrong = [i for i in all_imports() if i.target == "web" and i.room not in ("web", "api")]
    assert not wrong, "qhpc.web is mounted by qhpc.api and imported by nothing else: " + (
        ", ".join(f"{i.file} imports {i.module}" for i in wrong)
    )


def test_resources_import_only_resources() -> None:
    wrong = [
        i
        for i in all_imports()
        if i.room == "resources" and i.target != "resources" and i.module not in BOTTOM
    ]
    assert not wrong, "qhpc.resources must stand alone: " + ", ".join(
        f"{i.file} imports {i.module}" for i in wrong
    )


@pytest.mark.parametrize(
    ("room", "rooms_reached"),
    [
        ("api", None),
        ("broker", None),
        ("web", None),
        ("proxy", None),
        ("cli", {"api", "broker"}),
    ],
)
def test_other_rooms_are_reached_through_their_public_surface(
    room: str, rooms_reached: set[str] | None
) -> None:
    wrong = [
        i
        for i in all_imports()
        if i.room == room
        and i.target != room
        and i.module not in BOTTOM
        and (rooms_reached is None or i.target in rooms_reached)
        and i.module.count(".") > 1  # qhpc.ROOM.module, not qhpc.ROOM
        and (i.file, i.module) not in KNOWN_DEBT | PROTOCOL_IMPORTS
    ]
    assert not wrong, "import these names from the room's __init__ (export them there): " + (
        ", ".join(f"{i.file} imports {i.module}" for i in wrong)
    )


#: what the vendor proxy room may import
PROXY_MAY_IMPORT = {"proxy", "resources", "security"}


def test_the_vendor_proxy_stands_below_the_broker_and_the_api() -> None:
    found = all_imports()
    assert {i.file for i in found if i.room == "proxy"}, "no proxy room where expected"
    wrong = [
        i
        for i in found
        if i.room == "proxy" and i.target not in PROXY_MAY_IMPORT and i.module not in BOTTOM
    ]
    assert not wrong, "qhpc.proxy imports only resources, security and the bottom: " + (
        ", ".join(f"{i.file} imports {i.module}" for i in wrong)
    )
    users = {i.room for i in found if i.target == "proxy" and i.room != "proxy"}
    assert users <= {"api"}, f"only qhpc.api serves the vendor proxy; also: {sorted(users)}"


def test_the_bottom_modules_import_nothing_above_them() -> None:
    bottom_files = {m.removeprefix("qhpc.").replace(".", "/") + ".py" for m in BOTTOM}
    wrong = [i for i in all_imports() if i.file in bottom_files]
    assert {"files.py", "envvars.py", "errors.py"} <= bottom_files
    assert not wrong, "a bottom module imports qhpc: " + ", ".join(
        f"{i.file} imports {i.module}" for i in wrong
    )


def test_session_stands_below_everything_that_opens_a_session() -> None:
    found = all_imports()
    assert {i.file for i in found if i.room == "session"}, "no session room where expected"
    wrong = [
        i
        for i in found
        if i.room == "session" and i.target not in SESSION_MAY_IMPORT and i.module not in BOTTOM
    ]
    assert not wrong, "qhpc.session imports only qhpc.resources and the bottom: " + ", ".join(
        f"{i.file} imports {i.module}" for i in wrong
    )


def test_the_rest_client_does_not_import_the_programming_model() -> None:
    wrong = [
        i for i in all_imports() if i.file == "client.py" and i.target in ("program", "session")
    ]
    assert not wrong, "qhpc.client is below qhpc.program and qhpc.session: " + ", ".join(
        i.module for i in wrong
    )


def module_file(module: str) -> str | None:
    """The file (relative to src/qhpc) that ``module`` names, None if it is no file here."""
    parts = module.split(".")[1:]
    path = SOURCE.joinpath(*parts)
    if path.with_suffix(".py").is_file():
        return Path(*parts).with_suffix(".py").as_posix()
    if (path / "__init__.py").is_file():
        return Path(*parts, "__init__.py").as_posix()
    return None


def circles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected groups of more than one file (Tarjan), and files that
    import themselves."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:  # recursion depth is bounded by the number of files
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for after in sorted(edges.get(node, ())):
            if after not in index:
                visit(after)
                low[node] = min(low[node], low[after])
            elif after in on_stack:
                low[node] = min(low[node], index[after])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1 or node in edges.get(node, ()):
                found.append(frozenset(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def file_graph() -> dict[str, set[str]]:
    """Which file imports which (imports inside functions count: a lazy import is still a
    tie). A package's ``__init__.py`` is a file like any other, so ``from qhpc.program
    import X`` inside the program room closes a circle through its face."""
    edges: dict[str, set[str]] = {}
    for i in all_imports():
        target = module_file(i.module)
        if target is not None and target != i.file:
            edges.setdefault(i.file, set()).add(target)
    return edges


def test_no_import_circles_but_the_known_ones() -> None:
    found = circles(file_graph())
    new = [sorted(c) for c in found if c not in KNOWN_CIRCLES]
    assert not new, "files that import each other (break the loop: move what both need "
    "below them, or invert the arrow): " + "; ".join(" ↔ ".join(c) for c in new)


def test_each_known_circle_still_exists() -> None:
    """An entry of KNOWN_CIRCLES whose circle is gone must leave the list (so that it
    cannot come back unnoticed)."""
    found = circles(file_graph())
    gone = [sorted(c) for c in KNOWN_CIRCLES if c not in found]
    assert not gone, "these circles are broken: remove them from KNOWN_CIRCLES: " + "; ".join(
        " ↔ ".join(c) for c in gone
    )


def test_the_circle_finder_finds_loops_and_only_loops() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": set(), "f": {"f"}}
    assert sorted(map(sorted, circles(edges))) == [["a", "b", "c"], ["f"]]
    assert circles({"a": {"b"}, "b": {"c"}}) == []


def test_the_walk_sees_every_kind_of_import() -> None:
    """Imports inside functions and TYPE_CHECKING blocks, relative ones, modules named
    in ``from … import``: a broker file written like this breaks two rules."""
    text = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from qhpc.api.app import create_app\n"
        "def f():\n    from ..resources import local, PayloadError\n"
        "    import qhpc.store\n"
    )
    found = imports_in("broker/example.py", text)
    assert {i.module for i in found} == {
        "qhpc.api.app", "qhpc.resources.local", "qhpc.resources", "qhpc.store",
    }  # fmt: skip
    assert {i.room for i in found} == {"broker"}
    assert {i.target for i in found} == {"api", "resources", "store"}


def _store_reaches(relative: str, text: str) -> list[str]:
    """``broker.store`` / ``self.broker.store`` uses in a file, as ``file:line``."""
    found = []
    for node in ast.walk(ast.parse(text, relative)):
        if isinstance(node, ast.Attribute) and node.attr == "store":
            owner = node.value
            name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", None)
            if name == "broker":
                found.append(f"{relative}:{node.lineno}")
    return found


@pytest.mark.parametrize("room", ["api", "web"])
def test_the_api_never_holds_the_store(room: str) -> None:
    """Every mutation the API (and the console it mounts) makes goes through a broker
    method (which tells the scheduler at once); reads too go through
    ``broker.records`` and the queries."""
    wrong = [
        hit
        for path in sorted((SOURCE / room).rglob("*.py"))
        for hit in _store_reaches(path.relative_to(SOURCE).as_posix(), path.read_text("utf-8"))
    ]
    assert not wrong, "the API reaches past the broker into its store: " + ", ".join(wrong)
    # the check itself sees both shapes
    assert _store_reaches("api/x.py", "broker.store.get_job(1)\nself.broker.store.x()\n") == [
        "api/x.py:1", "api/x.py:2",
    ]  # fmt: skip


def test_nothing_imports_the_command_line() -> None:
    wrong = [i for i in all_imports() if i.target == "cli" and i.room != "cli"]
    assert not wrong, "the command line is the top of the house: " + ", ".join(
        f"{i.file} imports {i.module}" for i in wrong
    )

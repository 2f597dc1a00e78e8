"""The rooms of src/qhpc import each other the way ARCHITECTURE.md says.

- ``broker`` never imports ``api``; nothing below ``api`` imports it (only ``api``
  itself and the command line do);
- ``resources`` import nothing of qhpc but ``qhpc.resources`` (and the shared
  bottom modules, ``qhpc.errors``, ``qhpc.envvars``, ``qhpc.files`` and ``qhpc.states``);
- the bottom modules import nothing of qhpc;
- ``api`` and ``broker`` reach another room only through its public surface
  (``from qhpc.ROOM import NAME``), never a module inside it; nor does the
  command line reach ``api`` or ``broker`` any other way.

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
BOTTOM = {"qhpc", "qhpc.errors", "qhpc.envvars", "qhpc.files", "qhpc.states"}

#: known imports of a module inside another room, each to be replaced by the room's
#: public surface; (importing file, imported module)
KNOWN_DEBT = {
    # The two wire protocols (direct channel, ZeroMQ fast path) are modules shared by both
    # ends; their frame constants clash by name (HELLO, RESULT …), so the serving side
    # imports each protocol module rather than flat names from qhpc.runtime.
    ("broker/dispatch.py", "qhpc.runtime.direct"),
    ("api/fastpath.py", "qhpc.runtime.fastpath"),
}


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
    assert {"api", "broker", "resources", "runtime", "program", "cli"} <= rooms


def test_nothing_below_api_imports_api() -> None:
    wrong = [i for i in all_imports() if i.target == "api" and i.room not in ("api", "cli")]
    assert not wrong, "only qhpc.api itself and the command line may import qhpc.api: " + (
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
    [("api", None), ("broker", None), ("cli", {"api", "broker"})],
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
        and (i.file, i.module) not in KNOWN_DEBT
    ]
    assert not wrong, "import these names from the room's __init__ (export them there): " + (
        ", ".join(f"{i.file} imports {i.module}" for i in wrong)
    )


def test_the_bottom_modules_import_nothing_above_them() -> None:
    bottom_files = {m.removeprefix("qhpc.").replace(".", "/") + ".py" for m in BOTTOM}
    wrong = [i for i in all_imports() if i.file in bottom_files]
    assert {"files.py", "envvars.py", "errors.py"} <= bottom_files
    assert not wrong, "a bottom module imports qhpc: " + ", ".join(
        f"{i.file} imports {i.module}" for i in wrong
    )


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


def test_the_api_never_holds_the_store() -> None:
    """Every mutation the API makes goes through a broker method (which tells the
    scheduler at once); reads too go through ``broker.records`` and the queries."""
    wrong = [
        hit
        for path in sorted((SOURCE / "api").rglob("*.py"))
        for hit in _store_reaches(path.relative_to(SOURCE).as_posix(), path.read_text("utf-8"))
    ]
    assert not wrong, "the API reaches past the broker into its store: " + ", ".join(wrong)
    # the check itself sees both shapes
    assert _store_reaches("api/x.py", "broker.store.get_job(1)\nself.broker.store.x()\n") == [
        "api/x.py:1", "api/x.py:2",
    ]  # fmt: skip


def module_file(module: str) -> str | None:
    """The file (relative to src/qhpc) of ``qhpc.a.b``: ``a/b.py`` or ``a/b/__init__.py``."""
    parts = module.split(".")[1:]
    if not parts:  # qhpc itself
        return "__init__.py"
    inner = Path(*parts)
    for candidate in (inner.with_suffix(".py"), inner / "__init__.py"):
        if (SOURCE / candidate).is_file():
            return candidate.as_posix()
    return None


def circles(files: dict[str, set[str]]) -> list[list[str]]:
    """Each import circle among ``files`` (file -> files it imports), as a path back to
    its start; a depth-first walk, so every circle shows up at least once."""
    found: list[list[str]] = []
    state: dict[str, str] = {}  # "open" while on the walk's path, "done" after

    def walk(node: str, path: list[str]) -> None:
        state[node] = "open"
        path = [*path, node]
        for target in sorted(files.get(node, ())):
            if state.get(target) == "open":
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                walk(target, path)
        state[node] = "done"

    for node in sorted(files):
        if node not in state:
            walk(node, [])
    return found


def test_the_circle_finder_finds_a_circle() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert circles({"a": {"a"}}) == [["a", "a"]]
    assert circles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


@pytest.mark.parametrize("room", ["cli", "slurm", "study"])
def test_no_circles_inside_the_room(room: str) -> None:
    files: dict[str, set[str]] = {}
    for i in all_imports():
        target = module_file(i.module)
        if i.room == room and target is not None and target.startswith(f"{room}/"):
            files.setdefault(i.file, set()).add(target)
    assert files, f"no imports inside {room}/: is the room still a package?"
    assert not circles(files), f"import circles in {room}/: " + "; ".join(
        " -> ".join(c) for c in circles(files)
    )


def test_nothing_imports_the_command_line() -> None:
    wrong = [i for i in all_imports() if i.target == "cli" and i.room != "cli"]
    assert not wrong, "the command line is the top of the house: " + ", ".join(
        f"{i.file} imports {i.module}" for i in wrong
    )

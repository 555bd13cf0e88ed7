"""One small registry type for every extension point (methods, backbone sources, tower adapters, dataset formats).

A :class:`Registry` maps lowercase names to objects. Entries arrive three ways, all lazily, so nothing is imported
before it is asked for:

* ``@registry.register("name")`` in a module of the registry's ``package``: every module of that package is imported
  the first time a name is looked up, so a new extension is a new file and nothing else;
* ``registry.register_lazy("name", "pkg.module:attr")``: one entry imported by location when first asked for;
* the ``entry_points`` group (``[project.entry-points."promptbench.<kind>"]``) for extensions living in other
  distributions.

An unknown name fails in one line with close matches (``unknown method 'cop'; did you mean coop, cocoop?``).
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import pkgutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownName(KeyError):
    """A name no registry entry has; ``str()`` is the one-line message (not KeyError's quoted repr)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """``"; did you mean a, b?"`` for the close matches of ``name`` among ``choices`` (empty when none)."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not close:  # prefixes first: "co" -> coop, cocoop
        close = [c for c in choices if c.startswith(name)][:n] if name else []
    return f"; did you mean {', '.join(close)}?" if close else ""


def unknown(kind: str, name: str, choices: Iterable[str], hint: str = "") -> UnknownName:
    """The one-line error for an unknown ``kind`` called ``name`` (close matches, then every choice)."""
    choices = sorted(choices)
    return UnknownName(f"unknown {kind} '{name}'{did_you_mean(name, choices)} (available: {', '.join(choices)})"
                       + (f"; {hint}" if hint else ""))


class Registry(Generic[T]):
    """Named entries of one kind, filled on first lookup from a package, lazy locations and entry points."""

    def __init__(self, kind: str, *, package: str | None = None, skip: Iterable[str] = (),
                 entry_point_group: str | None = None, check_name: bool = True) -> None:
        self.kind = kind
        self.package = package
        self.skip = frozenset(skip)
        self.entry_point_group = entry_point_group
        self.check_name = check_name
        self._entries: dict[str, T] = {}
        self._lazy: dict[str, str] = {}
        self._loaded = False

    # -- filling --------------------------------------------------------------------------------------------------
    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """``@registry.register("name")`` (or ``registry.register("name", obj)``): add one entry under ``name``."""
        if self.check_name and (name != name.lower() or not name.replace("_", "").replace("-", "").isalnum()):
            raise ValueError(f"{self.kind} names are lowercase identifiers, got '{name}'")

        def add(entry: T) -> T:
            old = self._entries.get(name)
            if old is not None and old is not entry and not _same_definition(old, entry):
                raise ValueError(f"{self.kind} '{name}' registered twice ({_qualname(old)}, {_qualname(entry)})")
            self._entries[name] = entry
            self._lazy.pop(name, None)
            return entry

        return add if obj is None else add(obj)

    def register_lazy(self, name: str, location: str) -> None:
        """Add ``name`` as ``"package.module:attribute"``, imported when first asked for."""
        if name not in self._entries:
            self._lazy[name] = location

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests registering a throw-away entry)."""
        self._entries.pop(name, None)
        self._lazy.pop(name, None)

    def load(self) -> Registry[T]:
        """Import the package's modules and the entry points once (re-entrant: modules registering call it)."""
        if self._loaded:
            return self
        self._loaded = True
        if self.package:
            pkg = importlib.import_module(self.package)
            for info in pkgutil.iter_modules(pkg.__path__):
                if info.name not in self.skip and not info.name.startswith("_"):
                    importlib.import_module(f"{self.package}.{info.name}")
        if self.entry_point_group:
            from importlib.metadata import entry_points

            for ep in entry_points(group=self.entry_point_group):
                self.register_lazy(ep.name, ep.value)
        return self

    # -- lookup ---------------------------------------------------------------------------------------------------
    def get(self, name: str, hint: str = "") -> T:
        """The entry called ``name``; an unknown name raises :class:`UnknownName` with close matches."""
        if name not in self._entries and name not in self._lazy:
            self.load()
        if name in self._lazy:
            module, _, attr = self._lazy.pop(name).partition(":")
            obj = importlib.import_module(module)
            for part in attr.split(".") if attr else ():
                obj = getattr(obj, part)
            self._entries.setdefault(name, obj)  # type: ignore[arg-type]
        if name not in self._entries:
            raise unknown(self.kind, name, self.names(), hint)
        return self._entries[name]

    def names(self) -> list[str]:
        """Every registered name, sorted (imports the package and entry points)."""
        self.load()
        return sorted({*self._entries, *self._lazy})

    def declared_names(self) -> list[str]:
        """Every name, sorted, without importing anything: the ``@register("name")`` decorators read from the source
        of the package's modules (``ast``), the lazy locations and the entry points' names. Equal to :meth:`names`
        for a package whose modules register by decorator (a contract test checks it for the methods); what
        ``promptbench list`` prints without paying for torch."""
        found = set(self._entries) | set(self._lazy)
        for path in self._module_paths():
            found.update(_decorated_names(path))
        if self.entry_point_group:
            from importlib.metadata import entry_points

            found.update(ep.name for ep in entry_points(group=self.entry_point_group))
        return sorted(found)

    def declared_attribute(self, attr: str) -> dict[str, object]:
        """``{name: value}`` of a class attribute set to a literal (``family = "text"``) in the body of each
        ``@register("name")``-decorated class, or of a base class defined in the same module, read from the
        package's sources without importing them. Names whose value is not a literal there (inherited from another
        module, computed, lazy or entry-point entries) are left out: callers import those."""
        out: dict[str, object] = {}
        for path in self._module_paths():
            tree = _parsed(path)
            classes = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)} if tree else {}
            for cls in classes.values():
                for name in _register_args(cls):
                    value = _class_literal(cls, attr, classes)
                    if value is not _MISSING:
                        out[name] = value
        return out

    def _module_paths(self) -> list[Path]:
        """The source files of the package's modules (not skipped, not private)."""
        if not self.package:
            return []
        spec = importlib.util.find_spec(self.package)
        return [Path(folder) / f"{info.name}.py"
                for folder in ((spec.submodule_search_locations or []) if spec else [])
                for info in pkgutil.iter_modules([folder])
                if info.name not in self.skip and not info.name.startswith("_")]

    def items(self) -> list[tuple[str, T]]:
        return [(n, self.get(n)) for n in self.names()]

    def as_dict(self) -> dict[str, T]:
        return dict(self.items())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} loaded, {len(self._lazy)} lazy)"


_MISSING = object()


def _parsed(path: Path) -> ast.Module | None:
    """``path`` parsed (None when unreadable)."""
    try:
        return ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None


def _register_args(node: ast.AST) -> list[str]:
    """The string arguments of ``@register("name")`` / ``@<registry>.register("name")`` decorators on ``node``."""
    out = []
    for deco in getattr(node, "decorator_list", ()):
        func = deco.func if isinstance(deco, ast.Call) else None
        called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if called == "register" and deco.args and isinstance(deco.args[0], ast.Constant) \
                and isinstance(deco.args[0].value, str):
            out.append(deco.args[0].value)
    return out


def _decorated_names(path: Path) -> set[str]:
    """Every name registered by decorator in ``path``."""
    tree = _parsed(path)
    return {name for node in ast.walk(tree) for name in _register_args(node)} if tree else set()


def _class_literal(cls: ast.ClassDef, attr: str, classes: dict[str, ast.ClassDef], depth: int = 0) -> object:
    """The literal ``attr`` is set to in ``cls``'s body, else in its same-module bases (first base first)."""
    for stmt in cls.body:
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else \
            stmt.target if isinstance(stmt, ast.AnnAssign) else None
        if isinstance(target, ast.Name) and target.id == attr and stmt.value is not None:
            try:
                return ast.literal_eval(stmt.value)
            except ValueError:
                return _MISSING
    for base in cls.bases:
        if depth < 8 and isinstance(base, ast.Name) and base.id in classes and classes[base.id] is not cls:
            value = _class_literal(classes[base.id], attr, classes, depth + 1)
            if value is not _MISSING:
                return value
    return _MISSING


def _same_definition(a: object, b: object) -> bool:
    """Two classes/functions defined at the same place (a module imported twice re-registers its entries)."""
    return hasattr(a, "__qualname__") and hasattr(b, "__qualname__") and _qualname(a) == _qualname(b)


def _qualname(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"

"""What every patch of py-libp2p is checked against before it is applied.

A patch replaces an upstream method or module global. A later py-libp2p can
break it without a sound: a renamed method leaves ours unused, a global that
upstream stopped reading can still be assigned. So each patch names the
py-libp2p version it was written for and describes the shape it relies on
(attributes, signatures, names the upstream code reads); :meth:`Patch.check`
compares both with the installed py-libp2p and raises :class:`PatchMismatch`
naming the patch and every difference. Nothing here changes py-libp2p itself.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

LIBP2P_DIST = "libp2p"


class PatchMismatch(RuntimeError):
    """The installed py-libp2p is not what a patch was written for; nothing was patched."""


@functools.cache  # a process's py-libp2p does not change while it runs
def installed_version() -> str:
    return importlib.metadata.version(LIBP2P_DIST)


def _describe(owner: Any) -> str:
    return getattr(owner, "__qualname__", None) or getattr(owner, "__name__", repr(owner))


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def names_read(func: Any) -> set[str]:
    """Global and attribute names ``func``'s code uses, nested functions included."""
    code = getattr(inspect.unwrap(func), "__code__", None)
    if code is None:
        return set()
    return {name for c in _code_objects(code) for name in c.co_names}


def shape_of(func: Any) -> str:
    """A method's signature without annotations, e.g. ``(self, n=None)``: what callers use.

    The first parameter is shown as ``self`` whatever it is called (a wrapper may name it
    ``stream``): callers pass it by position.
    """
    sig = inspect.signature(func)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    if params and params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
        params[0] = params[0].replace(name="self")
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


@dataclass
class Shape:
    """The differences found so far between py-libp2p and what a patch expects."""

    problems: list[str] = field(default_factory=list)

    def attrs(self, owner: Any, *names: str) -> None:
        for name in names:
            if not hasattr(owner, name):
                self.problems.append(f"{_describe(owner)}.{name} is gone")

    def signature(self, owner: Any, name: str, expected: str, func: Any = None) -> None:
        """``owner.name`` (or ``func``, the upstream one a patch replaced) takes ``expected``."""
        func = getattr(owner, name, None) if func is None else func
        if func is None:
            self.problems.append(f"{_describe(owner)}.{name} is gone")
            return
        try:
            found = shape_of(func)
        except (TypeError, ValueError):
            found = "no signature"
        if found != expected:
            self.problems.append(f"{_describe(owner)}.{name} takes {found}, not {expected}")

    def reads(self, owner: Any, name: str, *used: str, func: Any = None) -> None:
        """The code of ``owner.name`` (or ``func``) still uses each of ``used``."""
        func = getattr(owner, name, None) if func is None else func
        if func is None:
            self.problems.append(f"{_describe(owner)}.{name} is gone")
            return
        found = names_read(func)
        for u in used:
            if u not in found:
                self.problems.append(f"{_describe(owner)}.{name} no longer uses {u}")

    def holds(self, condition: bool, what: str) -> None:
        if not condition:
            self.problems.append(what)


@dataclass
class Swap:
    """One upstream attribute (a method or a module global) replaced by ours.

    ``saved`` is upstream's value once applied; :meth:`upstream` is what the
    checks look at, so a check after install still sees py-libp2p's code.
    """

    owner: Any
    name: str
    new: Any
    saved: Any = None

    @property
    def applied(self) -> bool:
        return vars(self.owner).get(self.name) is self.new

    def upstream(self) -> Any:
        return self.saved if self.applied else getattr(self.owner, self.name, None)

    def apply(self) -> None:
        if not self.applied:
            self.saved = vars(self.owner)[self.name]
            setattr(self.owner, self.name, self.new)

    def remove(self) -> None:
        if self.applied:
            setattr(self.owner, self.name, self.saved)


@dataclass(frozen=True)
class Patch:
    """A named change to py-libp2p, applied only to the version and shape it was written for."""

    name: str
    written_for: str
    expect: Callable[[Shape], None]
    swaps: tuple[Swap, ...] = ()

    @property
    def applied(self) -> bool:
        return all(s.applied for s in self.swaps)

    def check(self) -> None:
        """Raise :class:`PatchMismatch` unless py-libp2p is what this patch expects."""
        found = installed_version()
        if found != self.written_for:
            raise PatchMismatch(f"py-libp2p patch {self.name!r} was written for py-libp2p "
                                f"{self.written_for}, but {found} is installed: check what it "
                                f"works around, then update or remove it (mesh/patches/)")
        shape = Shape()
        self.expect(shape)
        if shape.problems:
            raise PatchMismatch(f"py-libp2p patch {self.name!r} no longer fits py-libp2p {found}: "
                                + "; ".join(shape.problems))

    def apply(self) -> None:
        for s in self.swaps:
            s.apply()

    def remove(self) -> None:
        """Restore py-libp2p's own behaviour (for comparisons in tests and benchmarks)."""
        for s in self.swaps:
            s.remove()

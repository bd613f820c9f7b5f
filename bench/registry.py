"""Name -> factory registries with aliases, ownership and "did you mean" errors."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field


class RegistryError(Exception):
    """A registration conflict or an unknown name; the message says what to do."""


# A name is typed on the command line, split on commas in a matrix option and becomes a folder of
# a run's images: letters, digits and . _ + - only, starting with a letter or digit.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    kind: str
    name: str
    factory: Callable
    plugin: str
    aliases: tuple[str, ...] = ()

    @property
    def description(self) -> str:
        """The first line of the factory's docstring."""
        doc = (self.factory.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


@dataclass
class Registry:
    """The components of one kind (models, schedulers, ...) and who registered them."""

    kind: str
    _entries: dict[str, Entry] = field(default_factory=dict)
    _names: dict[str, str] = field(default_factory=dict)  # name or alias -> canonical name

    def add(self, name: str, factory: Callable, aliases: Sequence[str] = (), *, plugin: str) -> None:
        aliases = (aliases,) if isinstance(aliases, str) else tuple(aliases)
        for key in (name, *aliases):
            if not isinstance(key, str) or not _NAME.fullmatch(key):
                raise RegistryError(
                    f"plugin {plugin!r} registered a {self.kind} with an invalid name {key!r}: use letters, "
                    "digits and . _ + - only, starting with a letter or digit (a name is typed in "
                    "comma-separated lists and names a folder of images)"
                )
        if not callable(factory):
            raise RegistryError(
                f"plugin {plugin!r} registered {self.kind} {name!r} with a non-callable factory"
            )
        for key in (name, *aliases):
            if key in self._names:
                owner = self._entries[self._names[key]]
                raise RegistryError(
                    f"{self.kind[:-1] if self.kind.endswith('s') else self.kind} name {key!r} is registered twice: "
                    f"by plugin {owner.plugin!r} (as {owner.name!r}) and by plugin {plugin!r} (as {name!r})"
                )
        entry = Entry(self.kind, name, factory, plugin, aliases)
        self._entries[name] = entry
        for key in (name, *aliases):
            self._names[key] = name

    def remove_plugin(self, plugin: str) -> None:
        """Take back every component ``plugin`` registered (a plugin that failed half-way)."""
        for name in [n for n, e in self._entries.items() if e.plugin == plugin]:
            del self._entries[name]
        self._names = {key: name for key, name in self._names.items() if name in self._entries}

    def get(self, name: str) -> Entry:
        """The entry for a name or alias, or a RegistryError listing the close matches."""
        if name in self._names:
            return self._entries[self._names[name]]
        close = difflib.get_close_matches(name, list(self._names), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        known = ", ".join(sorted(self._entries)) or "none"
        raise RegistryError(
            f"unknown {self.kind[:-1] if self.kind.endswith('s') else self.kind} {name!r}.{hint} Known: {known}."
        )

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)

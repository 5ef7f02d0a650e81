"""One registry per component kind: name -> builder, filled by a decorator."""

from __future__ import annotations

from typing import Callable, Dict, Generic, Iterator, List, TypeVar

from .errors import UnknownChoiceError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind  # used in error messages, e.g. "model"
        self._entries: Dict[str, T] = {}
        # name prefix -> resolver(name) -> entry, for open-ended families (e.g. "timm/" + any timm model name):
        # an entry is made on first use and kept; the resolver raises a UserError for a name it does not know
        self._families: Dict[str, Callable[[str], T]] = {}
        self._resolved: Dict[str, T] = {}  # family members built so far (not in names(): families are open-ended)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@MODELS.register("resnet56")`. A second entry of one name is a bug."""

        def add(entry: T) -> T:
            self.add(name, entry)
            return entry

        return add

    def add(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = entry

    def add_family(self, prefix: str, resolve: Callable[[str], T]) -> None:
        """Names starting with `prefix` resolve on first use: `MODELS.add_family("timm/", timm_model_spec)`."""
        if prefix in self._families:
            raise ValueError(f"{self.kind} family '{prefix}' is registered twice")
        self._families[prefix] = resolve

    def _family_of(self, name: str) -> Callable[[str], T] | None:
        return next((fn for prefix, fn in self._families.items() if name.startswith(prefix)), None)

    def get(self, name: str) -> T:
        if name not in self._entries and self._family_of(name) is not None:
            if name not in self._resolved:
                self._resolved[name] = self._family_of(name)(name)
            return self._resolved[name]
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownChoiceError(self.kind, name, self.names()) from None

    def names(self) -> List[str]:
        """The named entries (a family's prefix is in `families()`)."""
        return sorted(self._entries)

    def families(self) -> List[str]:
        return sorted(self._families)

    def __contains__(self, name: object) -> bool:
        """A name of a family counts as present: `get` builds its entry or raises a one-line error."""
        return name in self._entries or (isinstance(name, str) and self._family_of(name) is not None)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

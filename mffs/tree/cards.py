"""cards/: a task's Metaflow cards, served under readable names."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from .nodes import Dir, Node, StoredFile, client_errors, join

if TYPE_CHECKING:
    from .tree import Tree

CARDS_DIR = "cards"


def card_file_names(stored_names: List[str], uuids_in_order: List[str]) -> Dict[str, str]:
    """Served card name -> stored card name. A stored name is `<type>[-<id>]-<uuid>.html`; it is served as
    `<type>[-<id>]-<n>.html`, n counting from 0 the cards with the same `<type>[-<id>]`, ordered by the position of
    their uuid in `uuids_in_order`, then (uuid not there) by stored name."""
    position = {}
    for uuid in uuids_in_order:
        position.setdefault(uuid, len(position))

    def stem_parts(stored: str) -> Tuple[str, str]:
        prefix, _, uuid = stored[: -len(".html")].rpartition("-")
        return (prefix, uuid) if prefix else (uuid, "")

    served: Dict[str, str] = {}
    counts: Dict[str, int] = {}
    for stored in sorted(stored_names, key=lambda name: (position.get(stem_parts(name)[1], len(position)), name)):
        prefix = stem_parts(stored)[0]
        number = counts.get(prefix, 0)
        counts[prefix] = number + 1
        served["%s-%d.html" % (prefix, number)] = stored
    return served


class CardsDir(Dir):
    """cards/: the task's Metaflow cards as `<type>[-<id>]-<n>.html`, byte-identical to the stored HTML files.

    Stored names end in a uuid (`default-<uuid>.html`, `<type>-<id>-<uuid>.html`) that means nothing to a reader,
    so n numbers the cards of one `<type>[-<id>]` from 0: in the order of the task's `card-info` metadata events
    (by time, then as listed: the order in which the task registered its @card decorators), then cards with no
    event in stored-name order (see `card_file_names`). A cloned (resumed) task shows its origin's cards, as
    Metaflow's `get_cards` does.
    """

    def __init__(self, tree: "Tree", path: str, mtime: float, stable: bool, task: Any):
        super().__init__(tree, path, mtime, stable)
        self.task = task
        self._store: Any = None
        self._names: Optional[Dict[str, str]] = None

    def _served_names(self) -> Dict[str, str]:
        if self._names is None:
            with client_errors(self.path):
                store = self.task.cards()
                events = sorted(
                    (entry for entry in self.task.metadata if entry.type == "card-info"), key=lambda e: e.created_at
                )
            self._store = store
            self._names = card_file_names(store.names if store else [], [_card_uuid(e) for e in events])
        return self._names

    def _card(self, name: str, stored: str) -> Node:
        store = self._store
        return StoredFile(
            self.tree, join(self.path, name), self.mtime, self.stable,
            lambda: store.size(stored), lambda: store.read(stored),
        )

    def children(self) -> List[Node]:
        return [self._card(name, stored) for name, stored in self._served_names().items()]

    def child(self, name: str) -> Node:
        stored = self._served_names().get(name)
        if stored is None:
            raise self._missing(name)
        return self._card(name, stored)


def _card_uuid(event: Any) -> str:
    """The card uuid of a `card-info` metadata event: its value's `card_uuid`, else the field name (the uuid)."""
    try:
        return json.loads(event.value).get("card_uuid") or event.name
    except (TypeError, ValueError, AttributeError):
        return event.name

"""The undo tree of one document: capsules as nodes, undo = go to the parent, fork = a new branch.

The tree holds capsule ids and the little metadata undo needs (text hash, document version); the
capsules themselves live in a `CapsuleStore`. Each branch is a cursor on a node; `commit` adds a child of
the active cursor's node and moves the cursor there, `undo` moves it to the parent, `redo` back down to
the child it came from (or the newest child). A fork adds cursors on the current node, so N sessions can
continue from one state and be switched between.
"""

from __future__ import annotations

import dataclasses
import logging

from capsule.capsule import Capsule, new_id

log = logging.getLogger(__name__)

MAIN = "main"


@dataclasses.dataclass
class Node:
    id: str  # the capsule id
    parent: str | None
    text_hash: str = ""
    doc_version: int | None = None
    children: list[str] = dataclasses.field(default_factory=list)  # oldest first
    redo_to: str | None = None  # the child `redo` goes to: the one last undone from, else the newest


class SessionTree:
    def __init__(self, uri: str = "") -> None:
        self.uri = uri
        self.nodes: dict[str, Node] = {}
        self.cursors: dict[str, str | None] = {MAIN: None}  # branch -> node id (None: before the first commit)
        self.branch = MAIN

    @property
    def current(self) -> str | None:
        """The node id the active branch is on."""
        return self.cursors[self.branch]

    def commit(self, capsule: Capsule | str, text_hash: str = "", doc_version: int | None = None) -> str:
        """Add `capsule` as a child of the current node and make it current; returns its id.

        A capsule already in the tree is just made current (committing the same state twice is a no-op).
        """
        if isinstance(capsule, Capsule):
            cid, text_hash, doc_version = capsule.id, capsule.text_hash, capsule.doc_version
        else:
            cid = capsule
        if cid not in self.nodes:
            parent = self.current
            self.nodes[cid] = Node(cid, parent, text_hash, doc_version)
            if parent is not None:
                self.nodes[parent].children.append(cid)
                self.nodes[parent].redo_to = cid
        self.cursors[self.branch] = cid
        return cid

    def undo(self) -> str | None:
        """Move to the parent; returns the new current id (None, and no move, at a root)."""
        cur = self.current
        if cur is None or self.nodes[cur].parent is None:
            return None
        parent = self.nodes[cur].parent
        self.nodes[parent].redo_to = cur
        self.cursors[self.branch] = parent
        return parent

    def redo(self) -> str | None:
        """Move back down to the child last undone from (else the newest); None, and no move, at a leaf."""
        cur = self.current
        if cur is None:
            return None
        node = self.nodes[cur]
        child = node.redo_to if node.redo_to in node.children else (node.children[-1] if node.children else None)
        if child is not None:
            self.cursors[self.branch] = child
        return child

    def fork(self, n: int) -> list[str]:
        """`n` new branches on the current node; returns their ids (the active branch stays)."""
        if n < 1:
            raise ValueError(f"fork needs n >= 1, got {n}")
        ids = [new_id() for _ in range(n)]
        for b in ids:
            self.cursors[b] = self.current
        return ids

    def switch(self, branch: str) -> str | None:
        """Make `branch` active; returns its node id."""
        if branch not in self.cursors:
            raise ValueError(f"unknown branch {branch!r} (have: {', '.join(self.cursors)})")
        self.branch = branch
        return self.current

    def branches(self) -> dict[str, str | None]:
        return dict(self.cursors)

    def children(self, cid: str) -> list[str]:
        return list(self.nodes[cid].children)

    def path(self, cid: str | None = None) -> list[str]:
        """Node ids from the root down to `cid` (default: the current node)."""
        out, cur = [], self.current if cid is None else cid
        while cur is not None:
            out.append(cur)
            cur = self.nodes[cur].parent
        return out[::-1]

    def find_text_hash(self, text_hash: str) -> str | None:
        """The node whose document text had this hash, nearest the current one along its path first."""
        for cid in reversed(self.path()):
            if self.nodes[cid].text_hash == text_hash:
                return cid
        hits = [cid for cid, node in self.nodes.items() if node.text_hash == text_hash]
        return hits[-1] if hits else None

    def remove(self, cid: str) -> None:
        """Forget a node (its capsule was pruned): children hang from its parent, cursors move up."""
        node = self.nodes.pop(cid, None)
        if node is None:
            return
        if node.parent is not None:
            siblings = self.nodes[node.parent].children
            i = siblings.index(cid)
            siblings[i : i + 1] = node.children
            if self.nodes[node.parent].redo_to == cid:
                self.nodes[node.parent].redo_to = node.children[-1] if node.children else None
        for child in node.children:
            self.nodes[child].parent = node.parent
        for b, at in self.cursors.items():
            if at == cid:
                self.cursors[b] = node.parent

    def __len__(self) -> int:
        return len(self.nodes)

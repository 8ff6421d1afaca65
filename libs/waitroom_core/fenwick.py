"""A growable Fenwick (binary indexed) tree of counts over 1-based indices.

Positions in a room are "how many live waiting tickets have a smaller queue number"; with one
count per queue number that is a prefix sum, answered here in O(log n) however long the queue.
The tree is one list (8 bytes per index: a node sums at most lowbit(i) counts, so all but one in
256 nodes hold a small int that Python shares; a list reads and writes faster than an
``array('q')``, which boxes every item); the counts themselves are not kept, growing derives the
new nodes from the old ones.
"""

from __future__ import annotations

from collections.abc import Iterable


class Fenwick:
    __slots__ = ("_tree",)

    def __init__(self, size: int = 1024) -> None:
        self._tree = [0] * (size + 1)

    @classmethod
    def from_counts(cls, counts: Iterable[int]) -> Fenwick:
        """A tree over ``counts[1:]`` (index 0 unused), built in one linear pass."""
        tree = cls(0)
        built = list(counts)
        if not built:
            built.append(0)
        size = len(built) - 1
        for i in range(1, size + 1):
            parent = i + (i & -i)
            if parent <= size:
                built[parent] += built[i]
        tree._tree = built
        return tree

    @property
    def size(self) -> int:
        return len(self._tree) - 1

    def add(self, index: int, delta: int) -> None:
        if index < 1:
            raise IndexError("Fenwick indices start at 1")
        tree = self._tree
        if index >= len(tree):
            self._grow(index)
            tree = self._tree
        n = len(tree)
        while index < n:
            tree[index] += delta
            index += index & -index

    def prefix(self, index: int) -> int:
        """Sum of the counts at indices 1..index."""
        tree = self._tree
        index = min(index, len(tree) - 1)
        total = 0
        while index > 0:
            total += tree[index]
            index -= index & -index
        return total

    def _grow(self, index: int) -> None:
        # Doubling keeps growth amortised O(1) per index. Every new count is 0, so a new node
        # i sums the old counts in (i - lowbit(i), old size]: only the nodes on the update path of
        # the old last index cover any of them, and each is a difference of two prefixes.
        old = self.size
        size = max(old, 1)  # a tree of size 0 would never grow by doubling
        while size < index:
            size *= 2
        total = self.prefix(old)
        upto = [(i, self.prefix(i - (i & -i))) for i in _update_path(old, size)]
        self._tree.extend([0] * (size - old))
        for i, before in upto:
            self._tree[i] = total - before


def _update_path(index: int, size: int) -> list[int]:
    """The nodes above ``index`` (exclusive) up to ``size`` that cover it."""
    path: list[int] = []
    if index < 1:
        return path
    i = index + (index & -index)
    while i <= size:
        path.append(i)
        i += i & -i
    return path

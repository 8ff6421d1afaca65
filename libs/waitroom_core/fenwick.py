"""A growable Fenwick (binary indexed) tree of counts over 1-based indices.

Positions in a room are "how many live waiting tickets have a smaller queue number"; with one
count per queue number that is a prefix sum, answered here in O(log n) however long the queue.
"""

from __future__ import annotations


class Fenwick:
    __slots__ = ("_tree", "_values")

    def __init__(self, size: int = 1024) -> None:
        self._values = [0] * (size + 1)
        self._tree = [0] * (size + 1)

    @classmethod
    def from_counts(cls, counts: list[int]) -> Fenwick:
        """A tree over ``counts[1:]`` (index 0 unused), built in one linear pass."""
        tree = cls(0)
        tree._values = list(counts) if counts else [0]
        tree._tree = _built(tree._values)
        return tree

    @property
    def size(self) -> int:
        return len(self._tree) - 1

    def add(self, index: int, delta: int) -> None:
        if index < 1:
            raise IndexError("Fenwick indices start at 1")
        if index > self.size:
            self._grow(index)
        self._values[index] += delta
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
        # Doubling keeps growth amortised O(1) per index; the rebuild is a linear pass.
        size = max(self.size, 1)  # a tree built with size 0 would never grow by doubling
        while size < index:
            size *= 2
        values = self._values + [0] * (size + 1 - len(self._values))
        self._values = values
        self._tree = _built(values)


def _built(values: list[int]) -> list[int]:
    """The Fenwick tree of ``values`` (index 0 unused): each node adds itself to its parent once."""
    tree = values[:]
    size = len(tree) - 1
    for i in range(1, size + 1):
        parent = i + (i & -i)
        if parent <= size:
            tree[parent] += tree[i]
    return tree

"""A room's tickets as columns: a few bytes per ticket instead of a Python object per ticket.

:class:`TicketTable` is what ``RoomState.tickets`` is: a read-only ``Mapping[str, Ticket]`` whose
:class:`Ticket` values are made on demand from the columns (a view: a copy of the ticket as it is
now; :func:`waitroom_core.room.evolve` changes the table, never a view). Only ``evolve`` (through
``RoomState``) and the snapshot codec write to it. See docs/adr/0008-columnar-room-state.md.

Layout. Queue numbers ``base+1 .. last`` are *rows* of the columns, row ``q - base - 1``:

- ``states``: one byte (0 waiting, 1 admitted, 2 expired, 3 left)
- ``issued``, ``admitted``, ``ended``: doubles (NaN: none)
- ``ids``: 16 bytes, the raw bytes of the id when it is a canonical UUID string (lower-case
  ``8-4-4-4-12`` hex, what the API makes, the Idempotency-Key ones included); any other id (tests,
  hand-made commands) is kept as text in ``odd`` and its 16 bytes are zero.

An id is found through ``index``: a dict from a 64-bit hash of the 16 raw bytes to the queue
number, checked against the row's bytes (two int objects and a dict slot per ticket, about 110 B,
but grown by one C-speed resize: see :class:`_Index`). Odd ids have a dict of their own
(``odd_nos``).

Forgetting (``forget_ended``): the rows up to the room's admission cursor hold no waiting ticket.
The ones that ended before a cutoff become *tombstones* (raw id and signed queue number, 24 bytes
and a 4-byte index slot each: they still answer "ended" for the 410 of the API and for the sequencer's
join idempotency); the admitted ones among them, and any ended after the cutoff, move to ``held``
(a dict of :class:`Ticket` objects, as many as the room holds admitted tickets); then the rows go
and ``base`` moves up. Queue numbers, counters and positions do not change.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Callable, ItemsView, Iterable, Iterator, Mapping, Sequence, ValuesView
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Any


class TicketState(StrEnum):
    WAITING = "waiting"
    ADMITTED = "admitted"
    EXPIRED = "expired"
    LEFT = "left"

    @property
    def live(self) -> bool:
        return self in (TicketState.WAITING, TicketState.ADMITTED)


@dataclass(slots=True)
class Ticket:
    ticket_id: str
    queue_no: int
    state: TicketState
    #: NaN for a forgotten ticket (a tombstone keeps no times)
    issued_at: float
    admitted_at: float | None = None
    ended_at: float | None = None


#: state codes of the ``states`` column (and of the snapshot format)
STATES = (TicketState.WAITING, TicketState.ADMITTED, TicketState.EXPIRED, TicketState.LEFT)
STATE_CODE = {state: code for code, state in enumerate(STATES)}
WAITING, ADMITTED, EXPIRED, LEFT = 0, 1, 2, 3
ID_BYTES = 16

_NAN = math.nan
_LITTLE = sys.byteorder == "little"
_WAITING_FLAGS = bytes([1] + [0] * 255)


@lru_cache(maxsize=1024)
def _key(ticket_id: str) -> tuple[bytes | None, int]:
    """:func:`canonical_raw` and :func:`id_hash` of an id, remembered for the few ids in flight:
    deciding and folding one command look its id up several times."""
    raw = canonical_raw(ticket_id)
    return raw, 0 if raw is None else id_hash(raw)


def canonical_raw(ticket_id: str) -> bytes | None:
    """The 16 bytes of a canonical (lower-case, hyphenated) UUID string; ``None`` for any other id."""
    if len(ticket_id) != 36 or not (ticket_id[8] == ticket_id[13] == ticket_id[18] == ticket_id[23] == "-"):
        return None
    digits = ticket_id.replace("-", "")
    if len(digits) != 32:
        return None
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        return None
    return raw if raw.hex() == digits else None  # fromhex takes upper case and spaces too


def uuid_text(raw: bytes | bytearray) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def id_hash(raw: bytes | bytearray) -> int:
    """64 bits of a raw id for the index (in memory only, never written anywhere)."""
    return int.from_bytes(raw[:8], "little") ^ int.from_bytes(raw[8:16], "little")


def _opt(value: float) -> float | None:
    return None if value != value else value  # noqa: PLR0124 - NaN is none


class _Index:
    """From an id hash to the row numbers of the ids with that hash: a dict, so growing it is one
    C-speed resize (an open-addressing ``array`` rebuilt in Python held the event loop 0.6-1.9 s
    when a room passed 600,000 tickets, longer than the sequencer's 3 s session can stand at the
    next doubling). A second row under one 64-bit hash (practically never) waits in ``more``."""

    __slots__ = ("more", "rows")

    def __init__(self) -> None:
        self.rows: dict[int, int] = {}
        self.more: dict[int, list[int]] = {}

    @property
    def used(self) -> int:
        return len(self.rows) + sum(len(extra) for extra in self.more.values())

    def find(self, h: int, same: Any) -> int:
        """The row whose id hashes to ``h`` and for which ``same(row)`` holds; 0 if none."""
        row = self.rows.get(h)
        if row is None:
            return 0
        if same(row):
            return row
        for other in self.more.get(h, ()):
            if same(other):
                return other
        return 0

    def insert(self, h: int, row: int) -> None:
        """Add ``row`` (not there yet)."""
        if h in self.rows:
            self.more.setdefault(h, []).append(row)
        else:
            self.rows[h] = row

    def remove(self, h: int, row: int) -> None:
        extra = self.more.get(h)
        if self.rows.get(h) == row:
            if extra:
                self.rows[h] = extra.pop()
            else:
                del self.rows[h]
        elif extra and row in extra:
            extra.remove(row)
        if extra is not None and not extra:
            del self.more[h]

    def compact(self) -> None:
        """Give back the room of removed entries (a dict does not shrink by itself until it grows)."""
        self.rows = dict(self.rows)


_GOLDEN = 0x9E3779B97F4A7C15  # Fibonacci hashing: the top bits of h * 2^64/phi
_M64 = (1 << 64) - 1
_MAX_FILL = 0.6
#: old slots moved to the new table per insert while a tombstone index grows (>= 2 keeps it under fill)
_MOVE_PER_INSERT = 4


def _probe(slots: array[int], mask: int, shift: int, h: int, same: Callable[[int], bool]) -> int:
    i = ((h * _GOLDEN) & _M64) >> shift
    while True:
        row = slots[i]
        if row == 0:
            return 0
        if same(row):
            return row
        i = (i + 1) & mask


class _Tombstones:
    """Insert-only open addressing from an id hash to a tombstone's row (1-based; 0: empty) in
    4-byte slots: about 10 B per tombstone where a dict entry costs about 110 B. It grows without
    a pause: a full table is replaced by one twice its size, and the old one's slots move over a
    few per insert (``_MOVE_PER_INSERT``); until they all have, a lookup reads both. (A table
    rebuilt at once in Python held the event loop for seconds at a million entries.)"""

    __slots__ = ("bits", "filled", "hash_of", "moved", "old", "old_bits", "slots")

    def __init__(self, hash_of: Callable[[int], int]) -> None:
        self.hash_of = hash_of  # row -> the hash of its id (from the tombstones' own id bytes)
        self.old: array[int] | None = None
        self.old_bits = self.moved = 0
        self._fresh(4)

    def _fresh(self, bits: int) -> None:
        self.bits = bits
        self.slots = array("I", bytes(4 << bits))
        self.filled = 0

    def find(self, h: int, same: Callable[[int], bool]) -> int:
        """The row whose id hashes to ``h`` and for which ``same(row)`` holds; 0 if none."""
        bits = self.bits
        row = _probe(self.slots, (1 << bits) - 1, 64 - bits, h, same)
        if row or self.old is None:
            return row
        return _probe(self.old, (1 << self.old_bits) - 1, 64 - self.old_bits, h, same)

    def insert(self, h: int, row: int) -> None:
        if self.old is None and self.filled + 1 > len(self.slots) * _MAX_FILL:
            self.old, self.old_bits, self.moved = self.slots, self.bits, 0
            self._fresh(self.bits + 1)
        if self.old is not None:
            self._move()
        self._put(h, row)

    def _put(self, h: int, row: int) -> None:
        slots, mask = self.slots, (1 << self.bits) - 1
        i = ((h * _GOLDEN) & _M64) >> (64 - self.bits)
        while slots[i]:
            i = (i + 1) & mask
        slots[i] = row
        self.filled += 1

    def _move(self) -> None:
        # Old slots stay as they are (never emptied): a lookup's probe chain in the old table stays
        # whole, and a row found in either table is the same row.
        old = self.old
        assert old is not None
        end = min(len(old), self.moved + _MOVE_PER_INSERT)
        for i in range(self.moved, end):
            row = old[i]
            if row:
                self._put(self.hash_of(row), row)
        self.moved = end
        if end == len(old):
            self.old = None


def _rebuilt(entries: Iterable[tuple[int, int]]) -> _Index:
    index = _Index()
    pairs = list(entries)
    index.rows = dict(pairs)
    if len(index.rows) != len(pairs):  # a shared hash: the slow way, keeping every row
        index.rows = {}
        for h, row in pairs:
            index.insert(h, row)
    return index


def _hashes(ids: bytearray | bytes) -> array[int]:
    """The :func:`id_hash` of every 16-byte id in ``ids``, in one C-speed pass per half."""
    words: array[int] = array("Q")
    words.frombytes(ids)
    if not _LITTLE:
        words.byteswap()
    low, high = words[0::2], words[1::2]
    return array("Q", map(int.__xor__, low, high))


class TicketTable(Mapping[str, Ticket]):
    __slots__ = (
        "_admitted",
        "_base",
        "_ended",
        "_held",
        "_ids",
        "_index",
        "_issued",
        "_last",
        "_odd",
        "_odd_nos",
        "_states",
        "_t_ids",
        "_t_index",
        "_t_nos",
        "_t_odd",
    )

    def __init__(self) -> None:
        self._base = 0
        self._last = 0
        self._states = bytearray()
        self._issued: array[float] = array("d")
        self._admitted: array[float] = array("d")
        self._ended: array[float] = array("d")
        self._ids = bytearray()
        self._odd: dict[int, str] = {}  # queue_no -> id, rows whose id is not a canonical UUID
        self._odd_nos: dict[str, int] = {}  # those ids (rows and held) -> queue_no
        self._index = _Index()
        self._held: dict[int, Ticket] = {}  # queue_no <= base, still kept: admitted or ended lately
        self._t_ids = bytearray()  # tombstones: raw ids ...
        self._t_nos: array[int] = array("q")  # ... and queue numbers, negative for "left"
        self._t_index = _Tombstones(self._tombstone_hash)
        self._t_odd: dict[str, int] = {}

    # ------------------------------------------------------------------------------ Mapping

    def _tombstone_hash(self, row: int) -> int:
        at = (row - 1) * ID_BYTES
        return id_hash(self._t_ids[at : at + ID_BYTES])

    def __len__(self) -> int:
        return self._last - self._base + len(self._held)

    def __iter__(self) -> Iterator[str]:
        for ticket in self._held.values():
            yield ticket.ticket_id
        yield from map(self._row_id, range(len(self._states)))

    def __contains__(self, ticket_id: object) -> bool:
        return isinstance(ticket_id, str) and self.queue_no_of(ticket_id) is not None

    def __getitem__(self, ticket_id: str) -> Ticket:
        queue_no = self.queue_no_of(ticket_id) if isinstance(ticket_id, str) else None
        if queue_no is None:
            raise KeyError(ticket_id)
        ticket = self.at(queue_no)
        assert ticket is not None
        return ticket

    def get(self, ticket_id: str, default: Any = None) -> Any:
        queue_no = self.queue_no_of(ticket_id)
        if queue_no is None:
            return default
        row = queue_no - self._base - 1
        return self._held[queue_no] if row < 0 else self._row(row, ticket_id)

    def values(self) -> ValuesView[Ticket]:
        return _Values(self)

    def items(self) -> ItemsView[str, Ticket]:
        return _Items(self)

    def __repr__(self) -> str:
        return f"TicketTable({len(self)} tickets, {self.forgotten_count} forgotten)"

    def tickets(self) -> Iterator[Ticket]:
        """Every kept ticket, in queue order."""
        yield from self._held.values()
        yield from map(self._row, range(len(self._states)))

    # ------------------------------------------------------------------------------ lookups

    @property
    def base(self) -> int:
        """Queue numbers up to this are not rows (held, forgotten, or left out of a snapshot)."""
        return self._base

    @property
    def forgotten_count(self) -> int:
        return len(self._t_nos) + len(self._t_odd)

    def queue_no_of(self, ticket_id: str) -> int | None:
        """The queue number of a kept ticket (live or ended, not forgotten)."""
        raw, h = _key(ticket_id)
        if raw is None:
            return self._odd_nos.get(ticket_id)
        # every command's and every status call's lookup
        index = self._index
        queue_no = index.rows.get(h)
        if queue_no is None:
            return None
        if self._same(queue_no, raw, ticket_id):
            return queue_no
        for other in index.more.get(h, ()):
            if self._same(other, raw, ticket_id):
                return other
        return None

    def _same(self, queue_no: int, raw: bytes, ticket_id: str) -> bool:
        row = queue_no - self._base - 1
        if row < 0:
            return self._held[queue_no].ticket_id == ticket_id
        return self._ids[row * ID_BYTES : row * ID_BYTES + ID_BYTES] == raw

    def at(self, queue_no: int) -> Ticket | None:
        """The kept ticket of ``queue_no`` (a view), ``None`` if forgotten or never issued."""
        row = queue_no - self._base - 1
        if row < 0:
            return self._held.get(queue_no)
        if row >= len(self._states):
            return None
        return self._row(row)

    def _row(self, row: int, ticket_id: str | None = None) -> Ticket:
        return Ticket(
            self._row_id(row) if ticket_id is None else ticket_id,
            self._base + row + 1,
            STATES[self._states[row]],
            self._issued[row],
            _opt(self._admitted[row]),
            _opt(self._ended[row]),
        )

    def _row_id(self, row: int) -> str:
        if self._odd:
            odd = self._odd.get(self._base + row + 1)
            if odd is not None:
                return odd
        return uuid_text(self._ids[row * ID_BYTES : row * ID_BYTES + ID_BYTES])

    def state_code(self, queue_no: int) -> int:
        """The state code of a row or held ticket (callers know it is kept)."""
        row = queue_no - self._base - 1
        if row < 0:
            return STATE_CODE[self._held[queue_no].state]
        return self._states[row]

    def first_waiting(self, queue_no: int, last: int) -> int:
        """The first waiting queue number from ``queue_no`` (not below the rows) on; ``last + 1`` if none."""
        row = self._states.find(WAITING, max(queue_no - self._base - 1, 0))
        return last + 1 if row < 0 else self._base + row + 1

    def waiting_from(self, queue_no: int) -> Iterator[Ticket]:
        """The waiting tickets from ``queue_no`` (not below the rows) on, oldest first."""
        states = self._states
        row = max(queue_no - self._base - 1, 0)
        while (row := states.find(WAITING, row)) >= 0:
            yield self._row(row)
            row += 1

    def waiting_counts(self) -> Iterator[int]:
        """1 per waiting row, 0 per other, after a 0 for index 0: a Fenwick tree from ``base`` on."""
        yield 0
        yield from self._states.translate(_WAITING_FLAGS)

    def forgotten(self, ticket_id: str) -> Ticket | None:
        """A forgotten ticket as its tombstone's view (state and queue number, no times)."""
        if not self._t_nos and not self._t_odd:
            return None
        raw, h = _key(ticket_id)
        if raw is None:
            signed = self._t_odd.get(ticket_id)
        else:
            t_ids = self._t_ids

            def same(row: int) -> bool:
                at = (row - 1) * ID_BYTES
                return t_ids[at : at + ID_BYTES] == raw

            row = self._t_index.find(h, same)
            signed = self._t_nos[row - 1] if row else None
        if signed is None:
            return None
        state = TicketState.LEFT if signed < 0 else TicketState.EXPIRED
        return Ticket(ticket_id, abs(signed), state, _NAN)

    # ------------------------------------------------------------------------------ changes

    def issue(self, ticket_id: str, queue_no: int, at: float) -> bool:
        """Append ``queue_no`` (= last + 1, the caller checks) unless the id is kept or forgotten
        already; whether it did."""
        raw, h = _key(ticket_id)
        if raw is None:
            if ticket_id in self._odd_nos or ticket_id in self._t_odd:
                return False
        else:
            if self._index.find(h, lambda q: self._same(q, raw, ticket_id)):
                return False
            if self._t_nos and self.forgotten(ticket_id) is not None:
                return False
        self._states.append(WAITING)
        self._issued.append(at)
        self._admitted.append(_NAN)
        self._ended.append(_NAN)
        self._last = queue_no
        if raw is None:
            self._ids += bytes(ID_BYTES)
            self._odd[queue_no] = ticket_id
            self._odd_nos[ticket_id] = queue_no
            return True
        self._ids += raw
        self._index.insert(h, queue_no)
        return True

    def admit(self, queue_no: int, at: float) -> None:
        row = queue_no - self._base - 1
        if row < 0:
            held = self._held[queue_no]
            held.state, held.admitted_at = TicketState.ADMITTED, at
            return
        self._states[row] = ADMITTED
        self._admitted[row] = at

    def end(self, queue_no: int, code: int, at: float) -> None:
        row = queue_no - self._base - 1
        if row < 0:
            held = self._held[queue_no]
            held.state, held.ended_at = STATES[code], at
            return
        self._states[row] = code
        self._ended[row] = at

    def forget_ended(self, cutoff: float, upto: int) -> int:
        """Forget the tickets up to queue number ``upto`` (none of them waiting) that ended
        before ``cutoff``; returns how many were forgotten. See the module doc."""
        forgotten = 0
        for queue_no, ticket in list(self._held.items()):
            if ticket.ended_at is not None and ticket.ended_at < cutoff:
                del self._held[queue_no]
                self._bury(ticket.ticket_id, canonical_raw(ticket.ticket_id), queue_no, STATE_CODE[ticket.state])
                forgotten += 1
        states, ended = self._states, self._ended
        rows = min(upto - self._base, len(states))
        moved = scanned = 0
        while scanned < rows:
            code = states[scanned]
            if code == WAITING or (code != ADMITTED and not ended[scanned] < cutoff):
                break  # an ended ticket kept a while yet: the rows behind it stay too
            scanned += 1
            if code != ADMITTED:
                moved = scanned  # admitted rows go to ``held`` only to free forgotten ones behind them
        if not moved:
            return forgotten
        base = self._base
        for row in range(moved):
            queue_no = base + row + 1
            odd = self._odd.pop(queue_no, None) if self._odd else None
            raw = None if odd is not None else bytes(self._ids[row * ID_BYTES : row * ID_BYTES + ID_BYTES])
            code = states[row]
            if code == ADMITTED:
                self._held[queue_no] = Ticket(
                    odd if odd is not None else uuid_text(raw or b""),
                    queue_no,
                    TicketState.ADMITTED,
                    self._issued[row],
                    self._admitted[row],
                )
            else:
                self._bury(odd if odd is not None else "", raw, queue_no, code)
                forgotten += 1
        del states[:moved]
        del self._issued[:moved]
        del self._admitted[:moved]
        del ended[:moved]
        del self._ids[: moved * ID_BYTES]
        self._base = base + moved
        if moved > len(self._index.rows):  # more forgotten than kept: give their room back
            self._index.compact()
        return forgotten

    def _bury(self, ticket_id: str, raw: bytes | None, queue_no: int, code: int) -> None:
        signed = -queue_no if code == LEFT else queue_no
        if raw is None:
            self._odd_nos.pop(ticket_id, None)
            self._t_odd[ticket_id] = signed
            return
        h = id_hash(raw)
        self._index.remove(h, queue_no)
        self._t_ids += raw
        self._t_nos.append(signed)
        self._t_index.insert(h, len(self._t_nos))


@dataclass(slots=True)
class Columns:
    """Tickets as the snapshot format holds them: one column each, in queue order."""

    queue_nos: array[int]  # 'Q'
    codes: bytes
    issued: array[float]
    admitted: array[float]  # NaN: none
    ended: array[float]  # NaN: none
    #: the ids as utf-8, joined by NUL
    ids: bytes


def export_columns(table: TicketTable, cutoff: float | None, upto: int) -> Columns:
    """The kept tickets of ``table``, less those up to ``upto`` that ended before ``cutoff``."""
    held = [t for t in table._held.values() if cutoff is None or t.ended_at is None or not t.ended_at < cutoff]
    rows = len(table._states)
    ended = table._ended
    old = max(0, min(upto - table._base, rows))  # rows up to ``upto``: the ones that may be left out
    picked: list[int] | None = None
    if cutoff is not None and old:
        picked = [i for i in range(old) if not ended[i] < cutoff]  # NaN (not ended) is kept
        if len(picked) == old:
            picked = None
    first = table._base + 1

    def column(values: array[float]) -> array[float]:
        if picked is None:
            return values[:]
        return array("d", map(values.__getitem__, picked)) + values[old:]

    numbers: Sequence[int]
    if picked is None:
        numbers = range(first, first + rows)
        codes = bytes(table._states)
        raw = bytes(table._ids)
    else:
        numbers = [first + i for i in picked] + list(range(first + old, first + rows))
        states = table._states
        codes = bytes(map(states.__getitem__, picked)) + bytes(states[old:])
        ids = table._ids
        raw = b"".join(ids[i * ID_BYTES : (i + 1) * ID_BYTES] for i in picked) + bytes(ids[old * ID_BYTES :])
    queue_nos = array("Q", [t.queue_no for t in held])
    queue_nos.extend(numbers)
    odd = table._odd
    if odd and any(q in odd for q in numbers):
        row_ids = [odd.get(q) or uuid_text(raw[i * ID_BYTES : (i + 1) * ID_BYTES]) for i, q in enumerate(numbers)]
        text = "\x00".join(row_ids).encode()
    else:
        text = uuid_texts(raw)
    if held:
        held_text = "\x00".join(t.ticket_id for t in held).encode()
        text = held_text + b"\x00" + text if text or numbers else held_text
    return Columns(
        queue_nos=queue_nos,
        codes=bytes(STATE_CODE[t.state] for t in held) + codes,
        issued=array("d", [t.issued_at for t in held]) + column(table._issued),
        admitted=array("d", [_NAN if t.admitted_at is None else t.admitted_at for t in held]) + column(table._admitted),
        ended=array("d", [_NAN if t.ended_at is None else t.ended_at for t in held]) + column(ended),
        ids=text,
    )


def restore_table(columns: Columns, last: int) -> TicketTable:
    """A table holding ``columns`` (validated by the caller: unique numbers up to ``last``, every
    number after the last missing one present). Raises ValueError on ids it cannot take."""
    n = len(columns.queue_nos)
    order = columns.queue_nos
    if any(order[i] >= order[i + 1] for i in range(n - 1)):
        raise ValueError("ticket numbers are not in increasing order")
    # rows: the longest run of numbers ending at ``last``; the tickets before it are held
    lo, hi = 0, n
    while lo < hi:  # the first j after which no number is missing
        mid = (lo + hi) // 2
        if last - order[mid] == n - 1 - mid:
            hi = mid
        else:
            lo = mid + 1
    split = lo
    table = TicketTable()
    table._base = order[split] - 1 if split < n else last
    table._last = last
    raw = raw_uuids(columns.ids, n)
    texts: list[str] | None = None
    if raw is None:
        texts = columns.ids.decode().split("\x00") if n else []
        if len(texts) != n:
            raise ValueError("the ids do not match the ticket columns")
    for j in range(split):
        code = columns.codes[j]
        ticket_id = texts[j] if texts is not None else uuid_text(raw[j * ID_BYTES : (j + 1) * ID_BYTES])  # type: ignore[index]
        table._held[order[j]] = Ticket(
            ticket_id,
            order[j],
            STATES[code],
            columns.issued[j],
            _opt(columns.admitted[j]),
            _opt(columns.ended[j]),
        )
    table._states = bytearray(columns.codes[split:])
    table._issued = columns.issued[split:]
    table._admitted = columns.admitted[split:]
    table._ended = columns.ended[split:]
    pairs: Iterable[tuple[int, int]]
    if texts is None:
        assert raw is not None
        table._ids = bytearray(raw[split * ID_BYTES :])
        hashes = _hashes(raw)
        if len(set(hashes)) != n and len({raw[i * ID_BYTES : (i + 1) * ID_BYTES] for i in range(n)}) != n:
            raise ValueError("a ticket id appears twice")
        pairs = zip(hashes, order, strict=True)
    else:
        if len(set(texts)) != n:
            raise ValueError("a ticket id appears twice")
        entries: list[tuple[int, int]] = []
        ids = bytearray()
        for j, ticket_id in enumerate(texts):
            one = canonical_raw(ticket_id)
            queue_no = order[j]
            if one is None:
                table._odd_nos[ticket_id] = queue_no
                if j >= split:
                    table._odd[queue_no] = ticket_id
                    ids += bytes(ID_BYTES)
            else:
                entries.append((id_hash(one), queue_no))
                if j >= split:
                    ids += one
        table._ids = ids
        pairs = entries
    table._index = _rebuilt(pairs)
    return table


def uuid_texts(raw: bytes) -> bytes:
    """The canonical texts of the 16-byte ids in ``raw``, utf-8, joined by NUL (C-speed strides)."""
    n = len(raw) // ID_BYTES
    if not n:
        return b""
    digits = raw.hex().encode()
    out = bytearray(37 * n)
    for at, digit in _TEXT_DIGITS:
        out[at::37] = digits[digit::32]
    for at in _DASHES:
        out[at::37] = b"-" * n
    return bytes(out[:-1])  # the last NUL goes: NUL separates


def raw_uuids(text: bytes, n: int) -> bytes | None:
    """The 16-byte ids of ``n`` canonical UUID texts joined by NUL; ``None`` if any is not one."""
    if not n or len(text) != 37 * n - 1:
        return None
    padded = text + b"\x00"
    if padded[36::37].strip(b"\x00") or any(padded[at::37].strip(b"-") for at in _DASHES):
        return None
    digits = bytearray(32 * n)
    for at, digit in _TEXT_DIGITS:
        digits[digit::32] = padded[at::37]
    try:
        raw = bytes.fromhex(digits.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None
    return raw if len(raw) == ID_BYTES * n and raw.hex().encode() == digits else None


_DASHES = (8, 13, 18, 23)
#: (position in the 36-character text, position in the 32 hex digits)
_TEXT_DIGITS = tuple((at, at - sum(1 for d in _DASHES if d < at)) for at in range(36) if at not in _DASHES)


class _Values(ValuesView[Ticket]):
    _mapping: TicketTable

    def __iter__(self) -> Iterator[Ticket]:
        return self._mapping.tickets()


class _Items(ItemsView[str, Ticket]):
    _mapping: TicketTable

    def __iter__(self) -> Iterator[tuple[str, Ticket]]:
        for ticket in self._mapping.tickets():
            yield ticket.ticket_id, ticket

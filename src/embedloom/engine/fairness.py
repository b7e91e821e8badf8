"""The order queued inputs are served in: weighted fair shares between tenants, and
within a tenant short requests first, so that one is never queued behind a long one.

Costs are the batcher's units: an input's tokens plus its share of a model
call's fixed cost (``overhead_tokens`` shared by a full batch).

Between tenants, start-time fair queueing per input: a tenant's virtual time
advances by the cost of what it is served divided by its weight, and among the
tenants with work queued the one with the least virtual time is served next.
Under contention each gets compute in proportion to its weight, and one that
floods the server queues behind itself only. A tenant that becomes busy starts
at the current virtual time: idle time is not saved up as credit.

Within a tenant, fair queueing by whole requests: a request gets a finish tag,
its start (the tenant's virtual time when it arrives) plus its cost, and the
request with the smallest tag is served next, all of it. A request of one input
arriving behind one of 64 finishes first; requests of one size run in arrival
order (so closed-loop callers' requests complete one by one, as they would
first-in-first-out, instead of all together at the end as under per-input
sharing). The tenant's virtual time is where the request being served has got
to (its start plus what it has been served), so a long request is overtaken
only by work that arrives before the virtual time reaches its tag: it waits at
most about its own size in newer, shorter work, and then runs.

Priority classes stay strict (the batcher ranks by class and lifts long waiters
by ageing): fairness is within a class. ``fifo`` keeps arrival order, the
behaviour before fair queueing, for comparison.

The same order predicts a newcomer's wait (``cost_ahead``): the work that would
run before a new request finishes, other than its own.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator, Sequence
from typing import Any, Generic, TypeVar

from embedloom.batching import HasTokens

__all__ = ["FairQueue"]


# What the batcher needs of a queued input is what the fair queue needs too
# (its tokens, its request, its priority class).
Q = TypeVar("Q", bound=HasTokens)


class _Flow:
    """One request's queued inputs, in index order, and its place in the fair order."""

    __slots__ = ("cost", "items", "key", "seq", "served", "start", "tag", "tenant")

    def __init__(self, key: int, tenant: _Tenant, seq: int, start: float, cost: float) -> None:
        self.key = key
        self.tenant = tenant
        self.items: list[Any] = []
        self.seq = seq
        self.start = start
        self.tag = start + cost  # its finish tag
        self.served = 0.0
        self.cost = 0.0  # of its inputs still queued


class _Tenant:
    """A tenant's queued requests of one priority class."""

    __slots__ = ("clock", "cost", "flows", "heap", "name", "priority_class", "seq", "vt", "weight")

    def __init__(self, name: str, weight: float, priority_class: int, seq: int) -> None:
        self.name = name
        self.weight = weight
        self.priority_class = priority_class
        self.seq = seq
        self.vt = 0.0  # virtual time among tenants
        self.clock = 0.0  # virtual time among its requests: where newcomers start
        self.cost = 0.0
        self.flows: dict[int, _Flow] = {}
        self.heap: list[tuple[float, int, _Flow]] = []  # (tag, arrival, flow)


class FairQueue(Generic[Q]):
    """Queued inputs by priority class → tenant → request. On the event loop's thread
    only, like the scheduler that owns it."""

    def __init__(self, overhead_tokens: int, max_batch_size: int, *, fifo: bool = False) -> None:
        self._overhead = overhead_tokens / max_batch_size
        self._fifo = fifo
        self._tenants: dict[tuple[str, int], _Tenant] = {}
        self._flows: dict[int, _Flow] = {}  # every request queued, in arrival order
        self._clock = 0.0  # tenants' virtual time: where a newly busy one starts
        self._count = 0
        self._cost = 0.0
        self._seq = itertools.count()

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Q]:
        for flow in self._flows.values():
            yield from flow.items

    @property
    def queued_cost(self) -> float:
        return self._cost

    def cost(self, item: Q) -> float:
        return item.n_tokens + self._overhead

    def cost_of_tokens(self, n_tokens: float) -> float:
        return n_tokens + self._overhead

    def push(self, items: Sequence[Q], tenant: str = "", weight: float = 1.0) -> None:
        """Queue one request's inputs (in index order) for ``tenant``."""
        if not items:
            return
        place = (tenant, items[0].priority_class)
        owner = self._tenants.get(place)
        if owner is None:
            owner = self._tenants[place] = _Tenant(tenant, weight, place[1], next(self._seq))
        owner.weight = weight
        if not owner.flows:
            owner.vt = max(owner.vt, self._clock)
        cost = sum(map(self.cost, items))
        key = id(items[0].owner)
        flow = _Flow(key, owner, next(self._seq), owner.clock, cost)
        flow.items = list(items)
        flow.cost = cost
        self._flows[key] = owner.flows[key] = flow
        heapq.heappush(owner.heap, (flow.tag, flow.seq, flow))
        owner.cost += cost
        self._cost += cost
        self._count += len(items)

    def service_order(self, limit: int) -> list[Q]:
        """The next ``limit`` inputs of each priority class present, in the order they
        would be served, most urgent class first."""
        order: list[Q] = []
        for priority_class in sorted({key[1] for key, t in self._tenants.items() if t.flows}):
            if self._fifo:
                order += self._arrival_order(priority_class, limit)
            else:
                order += self._fair_order(priority_class, limit)
        return order

    def _arrival_order(self, priority_class: int, limit: int) -> list[Q]:
        order: list[Q] = []
        for flow in self._flows.values():
            if flow.tenant.priority_class == priority_class:
                order += flow.items[: limit - len(order)]
                if len(order) >= limit:
                    break
        return order

    def _fair_order(self, priority_class: int, limit: int) -> list[Q]:
        """Simulate the fair queue on copies: tenants input by input, each one's
        requests whole, smallest finish tag first."""
        tenants = [
            (t.vt, t.seq, t)
            for t in self._tenants.values()
            if t.priority_class == priority_class and t.flows
        ]
        heapq.heapify(tenants)
        # Per tenant: its requests still to list (a heap copy), and the one being
        # listed with how many of its inputs are listed.
        pending: dict[int, tuple[list[tuple[float, int, _Flow]], list[Any]]] = {}
        order: list[Q] = []
        while tenants and len(order) < limit:
            tenant_vt, tenant_seq, tenant = tenants[0]
            state = pending.get(tenant.seq)
            if state is None:
                state = pending[tenant.seq] = (list(tenant.heap), [None, 0])
            heap, current = state
            if current[0] is None:
                while not heap[0][2].items:  # emptied since it was pushed
                    heapq.heappop(heap)
                current[0], current[1] = heapq.heappop(heap)[2], 0
            flow, index = current
            item = flow.items[index]
            order.append(item)
            if index + 1 < len(flow.items):
                current[1] = index + 1
            else:
                current[0] = None
                while heap and not heap[0][2].items:
                    heapq.heappop(heap)
            if current[0] is not None or heap:
                cost = self.cost(item) / tenant.weight
                heapq.heapreplace(tenants, (tenant_vt + cost, tenant_seq, tenant))
            else:
                heapq.heappop(tenants)
        return order

    def take(self, items: Sequence[Q]) -> None:
        """Remove ``items`` (chosen to run) and charge their cost to their requests
        and tenants."""
        for item in items:
            flow = self._flows[id(item.owner)]
            tenant = flow.tenant
            cost = self.cost(item)
            flow.served += cost
            tenant.vt += cost / tenant.weight
            tenant.clock = max(tenant.clock, flow.start + flow.served)
            self._clock = max(self._clock, tenant.vt)
            flow.items.remove(item)
            self._forget(flow, cost, 1)

    def remove(self, owner: object) -> list[Q]:
        """Remove every queued input of the request ``owner``, uncharged; they are returned."""
        flow = self._flows.get(id(owner))
        if flow is None:
            return []
        items = flow.items
        flow.items = []
        self._forget(flow, flow.cost, len(items))
        return items

    def _forget(self, flow: _Flow, cost: float, count: int) -> None:
        tenant = flow.tenant
        flow.cost -= cost
        tenant.cost -= cost
        self._cost -= cost
        self._count -= count
        if flow.items:
            return
        del self._flows[flow.key]
        del tenant.flows[flow.key]
        if not tenant.flows:
            tenant.cost = 0.0  # no rounding drift carried into its next busy period
            tenant.heap = []
            # Idle tenants owe nothing and are owed nothing once the clock passes them.
            for place, idle in list(self._tenants.items()):
                if not idle.flows and idle.vt <= self._clock:
                    del self._tenants[place]
        if not self._flows:
            self._cost = 0.0

    def cost_ahead(self, tenant: str, weight: float, priority_class: int, cost: float) -> float:
        """Cost units that would run before a new request of ``cost`` from ``tenant``
        finishes, other than its own work (inputs already queued only)."""
        if self._fifo:
            return sum(t.cost for t in self._tenants.values() if t.priority_class <= priority_class)
        mine = self._tenants.get((tenant, priority_class))
        within = 0.0
        if mine is not None and mine.flows:
            tag = mine.clock + cost
            within = sum(flow.cost for flow in mine.flows.values() if flow.tag <= tag)
            start = mine.vt
        else:
            start = self._clock
        # Its tenant's virtual time once it is done; other tenants' work up to that
        # virtual time runs interleaved with it.
        finish = start + (within + cost) / weight
        ahead = within
        for other in self._tenants.values():
            if other.priority_class < priority_class:
                ahead += other.cost
            elif other.priority_class == priority_class and other is not mine:
                ahead += min(other.cost, max(0.0, finish - other.vt) * other.weight)
        return ahead

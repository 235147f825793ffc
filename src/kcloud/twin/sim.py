"""The twin's core: one deployment's requests through kcloud's router and its replicas' batchers.

It simulates what `kcloud.serving` does, event by event:

- **gateway** (`gateway()`, `admit()`): one event loop, whose CPU per request is spent serially,
  so under load requests wait for it before they reach the router (computed ahead, all
  deployments' requests together); it can stall (`Pauses`), and a client over kcloud's
  connection cap is answered 503 at once;
- **router** (`serving/router.py`): each request goes to the live replica with the fewest rows
  queued plus computing, taking turns among equals; a request that finds no live replica is
  refused (503: the twin does not model cold starts);
- **admission** (`Batcher.check_admission`): 429 when `queue_limit` requests wait, or when the
  expected wait (rows ahead at the replica's drain rate) is longer than the queue budget or the
  time left to the request's deadline;
- **batcher** (`serving/batcher.py`): a batch closes at the replica's batch rows (the model's
  preferred batch for the device kind, else its max batch) or `max_queue_delay` after its oldest
  request arrived; up to `pipeline_depth` batches are on the worker at once; a request whose
  deadline passed while queued is dropped uncomputed (504);
- **devices**: a device computes its batches one at a time (or `lanes` at once), whichever of
  its replicas they come from, each batch in its profile's time (× a lognormal factor where the
  profile measured a spread);
- **failure**: a replica removed mid-run fails what it held; the router retries each of those
  requests once on another replica (a second failure answers 502), as it does for a dead replica.

Why compiled: an hour of a farm under 10,000 requests/s is 36 million requests. The event loop
below is plain typed Python that numba compiles when it is installed (the `twin` extra; the
`llm` extra brings it too, through vLLM); without numba the same code runs interpreted, correct
but ~100× slower.
Arrivals are generated vectorised (`kcloud.twin.load`) and the loop touches each request a few
times: on arrival, in its batch, at its answer. The router's least-loaded choice is a min-tree
over the replicas' loads, so it costs log(replicas), not replicas.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

try:  # numba is optional: the twin is correct without it, only slower
    from numba import njit as _njit

    COMPILED = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    COMPILED = False

    def _njit(*args, **kwargs):  # type: ignore[no-untyped-def]
        def wrap(function):  # type: ignore[no-untyped-def]
            return function

        return wrap


#: Request outcomes, as HTTP status codes; 0: still waiting when the simulation stopped.
OK, SHED, NO_REPLICA, TIMED_OUT, FAILED = 200, 429, 503, 504, 502
STATUSES = (OK, SHED, NO_REPLICA, TIMED_OUT, FAILED)

_DONE, _TIMER, _DOWN, _UP = range(4)  # event kinds (arrivals come from their own array)
# A replica's state in the compiled loop, as columns of one integer array: its queue (a chain
# through `nxt` from HEAD to TAIL), what waits and computes, the version that invalidates its
# pending events when it fails, and what it computed. Beside it, `timer_at`: when its batch-delay
# timer fires.
HEAD, TAIL, QCOUNT, QROWS, FLIGHT_ROWS, FLIGHT_BATCHES, VERSION, BATCHES, DONE_ROWS = range(9)
_INT_COLUMNS = 9


@dataclass(frozen=True)
class ReplicaTimes:
    """What the simulation needs of one replica: its service times and when it is up.

    `service_s[b]` is the time the device takes for a batch of `b` rows (index 0 unused);
    beyond the table a batch costs the last entry's time per row. Replicas on the same `device`
    share its compute: the device runs `lanes` batches at once (a measured profile says how many
    replicas ran at once when it was measured; one otherwise), the rest wait for a free lane, so
    two replicas on one CPU do not make it twice as fast. `device` None: a device of its own.
    """

    service_s: np.ndarray
    batch_rows: int  # rows at which a batch closes (0: batching off)
    up_at: float = 0.0
    down_at: float = np.inf
    device: str | None = None
    lanes: int = 1
    #: How much one batch's service time varies around the table's: each batch takes its table
    #: time × a lognormal factor of mean 1 and this log-space standard deviation (a measured
    #: profile's `service_sigma`). 0: every batch takes exactly its table time. Queues grow with
    #: this variance (Pollaczek–Khinchine), so a twin without it under-predicts waits and tails.
    service_sigma: float = 0.0

    @property
    def drain_rows_per_s(self) -> float:
        """Rows per second with full batches: the rate its queue drains at under load."""
        rows = min(max(1, self.batch_rows), len(self.service_s) - 1)
        return rows / float(self.service_s[rows])


@dataclass(frozen=True)
class Batching:
    """The batcher's settings that the simulation follows (`kcloud.models.config.Batching`)."""

    max_queue_delay_s: float
    queue_limit: int
    queue_budget_s: float  # 0: none
    pipeline_depth: int = 2  # what replicas use (`serving/replica.py`)


@dataclass(frozen=True)
class Pauses:
    """Spans in which the gateway's event loop runs nothing: `start_s[k]` to `end_s[k]`, ascending
    and apart.

    A Python gateway on a shared host stalls now and then (a garbage collection, the hypervisor
    taking the CPU, another process on its core). A request arriving in a stall waits for its end,
    and so does an answer ready in one; the requests that piled up then leave one by one. Rare and
    short as they are, stalls make most of a lightly loaded gateway's p99.
    """

    start_s: np.ndarray
    end_s: np.ndarray

    @classmethod
    def drawn(cls, every_s: float, mean_s: float, horizon_s: float, rng: np.random.Generator) -> Pauses:
        """Stalls of exponential length (mean `mean_s`) after exponential gaps (mean `every_s`)."""
        if every_s <= 0 or mean_s <= 0:
            raise ValueError("pauses need every_s > 0 and mean_s > 0")
        count = int(horizon_s / every_s * 1.5) + 10  # more than the horizon needs
        gaps = rng.exponential(every_s, count)
        lengths = rng.exponential(mean_s, count)
        end = np.cumsum(gaps + lengths)
        keep = end - lengths < horizon_s
        return cls((end - lengths)[keep], end[keep])

    def defer(self, times_s: np.ndarray) -> np.ndarray:
        """Each time moved to the end of the stall it falls in (times outside stalls, and NaN, kept)."""
        times_s = np.asarray(times_s, np.float64)
        if not len(self.start_s):
            return times_s
        k = np.searchsorted(self.start_s, times_s, side="right") - 1
        inside = (k >= 0) & (times_s < self.end_s[np.maximum(k, 0)])
        return np.where(inside, self.end_s[np.maximum(k, 0)], times_s)


def gateway(arrivals_s: np.ndarray, seconds_per_request: float, pauses: Pauses | None = None) -> np.ndarray:
    """When each request leaves a gateway that handles one at a time for `seconds_per_request`.

    kcloud's gateway is one event loop: its own CPU per request (HTTP, auth, decoding, tokenising)
    is spent serially, so under load requests wait for it before they reach a router. A FIFO
    single server: d[i] = max(a[i], d[i-1]) + g, solved without a loop as
    d[i] = g·(i+1) + max over j <= i of (a[j] - g·j). `arrivals_s` must ascend (all deployments'
    requests together: they share the gateway). With `pauses`, a request arriving in a stall
    enters at its end (the order is kept: deferring never reorders).
    """
    if pauses is not None:
        arrivals_s = pauses.defer(arrivals_s)
    if seconds_per_request <= 0 or not len(arrivals_s):
        return np.asarray(arrivals_s, np.float64)
    steps = seconds_per_request * np.arange(len(arrivals_s))
    return steps + seconds_per_request + np.maximum.accumulate(arrivals_s - steps)


def admit(
    arrivals_s: np.ndarray, seconds_per_request: float, pauses: Pauses | None, most_open: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """`gateway()` with kcloud's per-client connection cap: (when each request leaves the gateway,
    which were refused). A request that finds `most_open` requests of its client still waiting
    for the gateway is answered 503 at once and costs it nothing (the load counts as one client,
    as a load generator on one address does). The cap counts the requests waiting for the gateway,
    not those already at a replica: where a client's open requests pile up when the gateway is
    the bottleneck, and a replica's own queue limit (429) bounds the rest. `most_open` None: no cap.
    """
    if most_open is None:
        return gateway(arrivals_s, seconds_per_request, pauses), np.zeros(len(arrivals_s), np.bool_)
    if pauses is not None:
        arrivals_s = pauses.defer(arrivals_s)
    return _capped(np.ascontiguousarray(arrivals_s, np.float64), float(seconds_per_request), int(most_open))


@_njit(cache=True)
def _capped(arrival, g, cap):  # pragma: no cover - compiled; `admit` is tested
    n = arrival.shape[0]
    leave = np.empty(n)
    refused = np.zeros(n, np.bool_)
    queue = np.empty(max(n, 1), np.int64)  # the admitted, in order: they leave in that order
    admitted = 0
    first_waiting = 0
    last = -np.inf
    for i in range(n):
        while first_waiting < admitted and leave[queue[first_waiting]] <= arrival[i]:
            first_waiting += 1
        if admitted - first_waiting >= cap:
            refused[i] = True
            leave[i] = arrival[i]
            continue
        last = max(arrival[i], last) + g
        leave[i] = last
        queue[admitted] = i
        admitted += 1
    return leave, refused


@dataclass
class Outcome:
    """Per request: status, when its answer left (s), which replica served it (-1: none).

    Per replica: seconds busy in each time bin (`busy_s[replica, bin]`), batches and rows computed.
    """

    status: np.ndarray
    end_s: np.ndarray
    replica: np.ndarray
    busy_s: np.ndarray
    batches: np.ndarray
    rows: np.ndarray
    bin_s: float


def simulate(
    arrivals_s: np.ndarray,
    rows: np.ndarray,
    replicas: list[ReplicaTimes],
    batching: Batching,
    *,
    deadline_s: float | None = None,
    overhead_s: float = 0.0,
    ready_s: np.ndarray | None = None,
    bin_s: float = 1.0,
    horizon_s: float | None = None,
    seed: int = 0,
) -> Outcome:
    """Run one deployment's requests (`arrivals_s` ascending, `rows` per request) to the end.

    `ready_s` is when each request leaves the gateway for its router (default: when it arrived;
    `gateway` gives the times a busy gateway makes), and `overhead_s` a fixed delay on top that
    occupies nothing (network, client). Latency and deadlines count from the arrival. `bin_s`
    sets the resolution of the busy-time record behind utilisation and energy; `horizon_s` its
    length (default: up to the last arrival). `seed` draws the service-time factors of replicas
    with a `service_sigma` (the same seed, the same run).
    """
    if len(arrivals_s) != len(rows):
        raise ValueError("arrivals and rows differ in length")
    if not replicas:
        raise ValueError("a deployment needs at least one replica to simulate")
    if bin_s <= 0:
        raise ValueError("bin_s must be > 0")
    width = max(len(r.service_s) for r in replicas)
    table = np.full((len(replicas), width), np.inf)
    for i, replica in enumerate(replicas):
        table[i, : len(replica.service_s)] = replica.service_s
        table[i, len(replica.service_s) :] = (
            replica.service_s[-1] * np.arange(len(replica.service_s), width) / (len(replica.service_s) - 1)
        )
    devices: dict[str, int] = {}
    device_of = np.array(
        [
            devices.setdefault(r.device if r.device is not None else f"\0{k}", len(devices))
            for k, r in enumerate(replicas)
        ],
        np.int64,
    )
    lanes = np.ones(len(devices), np.int64)
    for k, replica in enumerate(replicas):
        lanes[device_of[k]] = max(lanes[device_of[k]], replica.lanes)
    sharing = np.bincount(device_of, minlength=len(devices))
    # a replica's queue drains at its share of the device's lanes when others share them
    drain = np.array(
        [
            r.drain_rows_per_s * min(1.0, lanes[device_of[k]] / sharing[device_of[k]])
            for k, r in enumerate(replicas)
        ],
        np.float64,
    )
    lane_free = np.where(np.arange(lanes.max())[None, :] < lanes[:, None], 0.0, np.inf)
    last = float(arrivals_s[-1]) if len(arrivals_s) else 0.0
    horizon = max(horizon_s or 0.0, last)
    bins = int(np.ceil(horizon / bin_s)) + 2  # work finishing after the horizon lands in the last bins
    ready = arrivals_s if ready_s is None else ready_s
    if len(ready) != len(arrivals_s) or (len(ready) and (np.diff(ready) < 0).any()):
        raise ValueError("ready times must match the arrivals and ascend")
    sigma = np.array([r.service_sigma for r in replicas], np.float64)
    if (sigma < 0).any():
        raise ValueError("service_sigma must be >= 0")
    # one standard normal per request: a batch takes the draw of its first request, so the factors
    # cost one array, not a random-number generator inside the compiled loop
    normal = (
        np.random.default_rng(seed).standard_normal(max(1, len(arrivals_s)))
        if (sigma > 0).any()
        else np.zeros(1)
    )
    status, end, served, busy, batches, done_rows = _run(
        np.ascontiguousarray(arrivals_s, np.float64),
        np.ascontiguousarray(ready, np.float64),
        np.ascontiguousarray(rows, np.int64),
        table,
        np.array([r.batch_rows for r in replicas], np.int64),
        drain,
        device_of,
        lane_free,
        np.array([r.up_at for r in replicas], np.float64),
        np.array([r.down_at for r in replicas], np.float64),
        sigma,
        normal,
        float(batching.max_queue_delay_s),
        int(batching.queue_limit),
        float(batching.queue_budget_s) if batching.queue_budget_s > 0 else np.inf,
        int(batching.pipeline_depth),
        float(deadline_s) if deadline_s else np.inf,
        float(overhead_s),
        float(bin_s),
        bins,
    )
    return Outcome(status, end, served, busy, batches, done_rows, bin_s)


# fmt: off
# The compiled kernel: plain typed loops that numba turns into machine code.

@_njit(cache=True)
def _service(table: np.ndarray, r: int, rows: int) -> float:
    width = table.shape[1] - 1
    if rows <= width:
        return table[r, rows]
    return table[r, width] * rows / width


@_njit(cache=True)
def _set_load(tree: np.ndarray, size: int, r: int, load: float) -> None:
    i = size + r
    tree[i] = load
    i //= 2
    while i >= 1:
        tree[i] = min(tree[2 * i], tree[2 * i + 1])
        i //= 2


@_njit(cache=True)
def _first_at_most(tree: np.ndarray, size: int, start: int, bound: float) -> int:
    """The first replica at or after `start` whose load is at most `bound`; -1 when none is."""
    i = size + start
    if tree[i] <= bound:
        return start
    while True:  # climb until a right sibling's subtree holds one
        while i % 2 == 1:
            if i == 1:
                return -1
            i //= 2
        i += 1
        if tree[i] <= bound:
            break
    while i < size:  # descend to its first leaf within the bound
        i = 2 * i if tree[2 * i] <= bound else 2 * i + 1
    return i - size


@_njit(cache=True)
def _add_busy(busy: np.ndarray, r: int, start: float, length: float, bin_s: float) -> None:
    """Spread `length` seconds of work from `start` over the time bins it covers."""
    bins = busy.shape[1]
    t = start
    stop = start + length
    while t < stop:
        b = int(t // bin_s)
        if b >= bins - 1:
            busy[r, bins - 1] += stop - t
            return
        edge = (b + 1) * bin_s
        step = min(stop, edge) - t
        busy[r, b] += step
        t += step
        if step <= 0.0:  # float edge case: move past the edge
            t = edge


@_njit(cache=True)
def _run(arrival, ready, rows, table, batch_rows, drain, device_of, lane_free, up_at, down_at, sigma,
         normal, delay, queue_limit, budget, depth, deadline, overhead, bin_s, bins):  # pragma: no cover
    n = arrival.shape[0]
    nrep = table.shape[0]
    status = np.zeros(n, np.int64)
    end = np.full(n, np.nan)
    served = np.full(n, -1, np.int64)
    retried = np.zeros(n, np.bool_)
    nxt = np.full(n, -1, np.int64)  # queue and batch chains
    enq = np.zeros(n, np.float64)
    busy = np.zeros((nrep, bins))
    rep = np.zeros((nrep, _INT_COLUMNS), np.int64)
    rep[:, HEAD] = -1
    rep[:, TAIL] = -1
    timer_at = np.full(nrep, np.inf)
    flight_head = np.full((nrep, depth), -1, np.int64)  # in-flight batches (chains), by slot
    alive = np.zeros(nrep, np.bool_)
    turn = 0
    # the router's view: a min-tree over each replica's load (rows queued plus computing; a replica
    # that is not live is +inf), so that picking the least loaded costs log(replicas), not replicas
    size = 1
    while size < nrep:
        size *= 2
    tree = np.full(2 * size, np.inf)

    # events: (time, kind, replica, payload, version); payload: a batch's slot for _DONE
    heap = [(0.0, 0, 0, 0, 0)]
    heap.pop()
    for r in range(nrep):
        heapq.heappush(heap, (up_at[r], _UP, r, 0, 0))
        if down_at[r] < np.inf:
            heapq.heappush(heap, (down_at[r], _DOWN, r, 0, 0))

    # A request that must be routed now: its index on a small stack (retries come from failures).
    redo = np.empty(n if n > 0 else 1, np.int64)
    next_arrival = 0
    while True:
        t_arrival = ready[next_arrival] + overhead if next_arrival < n else np.inf
        t_event = heap[0][0] if len(heap) > 0 else np.inf
        if t_arrival == np.inf and t_event == np.inf:
            break
        nredo = 0
        if t_arrival < t_event:
            now = t_arrival
            redo[0] = next_arrival
            nredo = 1
            next_arrival += 1
        else:
            now, kind, r, payload, ver = heapq.heappop(heap)
            if kind == _UP:
                alive[r] = True
            elif kind == _DOWN:
                alive[r] = False
                rep[r, VERSION] += 1
                timer_at[r] = np.inf
                # what it held is retried once elsewhere: its in-flight batches, then its queue
                for slot in range(depth):
                    i = flight_head[r, slot]
                    while i != -1:
                        redo[nredo] = i
                        nredo += 1
                        i = nxt[i]
                    flight_head[r, slot] = -1
                i = rep[r, HEAD]
                while i != -1:
                    redo[nredo] = i
                    nredo += 1
                    i = nxt[i]
                rep[r, HEAD] = -1
                rep[r, TAIL] = -1
                rep[r, QCOUNT] = 0
                rep[r, QROWS] = 0
                rep[r, FLIGHT_ROWS] = 0
                rep[r, FLIGHT_BATCHES] = 0
                for k in range(nredo):
                    i = redo[k]
                    if retried[i]:
                        status[i] = 502
                        end[i] = now
                        redo[k] = -1
                    else:
                        retried[i] = True
            elif kind == _TIMER:
                if ver != rep[r, VERSION] or timer_at[r] != now:
                    continue
                timer_at[r] = np.inf
            elif kind == _DONE:
                if ver != rep[r, VERSION]:
                    continue
                i = flight_head[r, payload]
                count_rows = 0
                while i != -1:
                    status[i] = 200
                    end[i] = now
                    count_rows += rows[i]
                    i = nxt[i]
                flight_head[r, payload] = -1
                rep[r, FLIGHT_ROWS] -= count_rows
                rep[r, FLIGHT_BATCHES] -= 1
            if kind in (_TIMER, _DONE):
                _dispatch(r, now, arrival, rows, table, batch_rows, device_of, lane_free, sigma, normal,
                          delay, depth, deadline, bin_s, nxt, enq, status, end, rep, timer_at, flight_head,
                          busy, heap)
            _set_load(tree, size, r, rep[r, QROWS] + rep[r, FLIGHT_ROWS] if alive[r] else np.inf)

        # route what arrived (or must be retried) now
        for k in range(nredo):
            i = redo[k]
            if i < 0:
                continue
            # the least loaded live replica, the first at or after this request's turn among equals
            # (as `Router._least_loaded` takes the minimum of the live replicas rotated by a turn)
            best = -1
            if tree[1] < np.inf:
                best = _first_at_most(tree, size, turn % nrep, tree[1])
                if best == -1:
                    best = _first_at_most(tree, size, 0, tree[1])
            turn += 1
            if best == -1:
                status[i] = 503
                end[i] = now
                continue
            r = best
            left = arrival[i] + deadline - now
            if left <= 0.0:
                status[i] = 504
                end[i] = now
                continue
            if rep[r, QCOUNT] >= queue_limit:
                status[i] = 429
                end[i] = now
                continue
            limit = min(budget, left)
            if limit < np.inf and (rep[r, QROWS] + rep[r, FLIGHT_ROWS]) / drain[r] > limit:
                status[i] = 429
                end[i] = now
                continue
            served[i] = r
            enq[i] = now
            nxt[i] = -1
            if rep[r, TAIL] == -1:
                rep[r, HEAD] = i
            else:
                nxt[rep[r, TAIL]] = i
            rep[r, TAIL] = i
            rep[r, QCOUNT] += 1
            rep[r, QROWS] += rows[i]
            _dispatch(r, now, arrival, rows, table, batch_rows, device_of, lane_free, sigma, normal, delay,
                      depth, deadline, bin_s, nxt, enq, status, end, rep, timer_at, flight_head, busy, heap)
            _set_load(tree, size, r, rep[r, QROWS] + rep[r, FLIGHT_ROWS])
    return status, end, served, busy, rep[:, BATCHES].copy(), rep[:, DONE_ROWS].copy()


@_njit(cache=True)
def _dispatch(r, now, arrival, rows, table, batch_rows, device_of, lane_free, sigma, normal, delay,
              depth, deadline, bin_s, nxt, enq, status, end, rep, timer_at, flight_head, busy,
              heap):  # pragma: no cover
    """Send formed batches to replica `r`'s worker while it takes more; else set the delay timer."""
    limit = batch_rows[r]
    while rep[r, FLIGHT_BATCHES] < depth and rep[r, QCOUNT] > 0:
        formed = limit == 0 or rep[r, QROWS] >= limit or now >= enq[rep[r, HEAD]] + delay
        if not formed:
            due = enq[rep[r, HEAD]] + delay
            if timer_at[r] != due:
                timer_at[r] = due
                heapq.heappush(heap, (due, _TIMER, r, 0, rep[r, VERSION]))
            return
        # take whole requests in arrival order up to the row limit; drop those past their deadline
        first = -1
        last = -1
        taken = 0
        i = rep[r, HEAD]
        while i != -1:
            following = nxt[i]
            if now >= arrival[i] + deadline:  # failed at its deadline, as `Batcher.result` does
                status[i] = 504
                end[i] = arrival[i] + deadline
                rep[r, QCOUNT] -= 1
                rep[r, QROWS] -= rows[i]
                i = following
                continue
            if first != -1 and (limit == 0 or taken + rows[i] > limit):
                break
            rep[r, QCOUNT] -= 1
            rep[r, QROWS] -= rows[i]
            taken += rows[i]
            if first == -1:
                first = i
            else:
                nxt[last] = i
            last = i
            i = following
        rep[r, HEAD] = i
        if i == -1:
            rep[r, TAIL] = -1
        if first == -1:
            continue  # everything queued had expired
        nxt[last] = -1
        slot = 0
        while flight_head[r, slot] != -1:
            slot += 1
        flight_head[r, slot] = first
        rep[r, FLIGHT_BATCHES] += 1
        rep[r, FLIGHT_ROWS] += taken
        device = device_of[r]
        lane = np.argmin(lane_free[device])
        start = max(now, lane_free[device, lane])
        length = _service(table, r, taken)
        if sigma[r] > 0.0:  # lognormal, mean 1: the batch's first request's draw
            length *= np.exp(sigma[r] * normal[first % normal.shape[0]] - 0.5 * sigma[r] * sigma[r])
        lane_free[device, lane] = start + length
        _add_busy(busy, r, start, length, bin_s)
        rep[r, BATCHES] += 1
        rep[r, DONE_ROWS] += taken
        heapq.heappush(heap, (start + length, _DONE, r, slot, rep[r, VERSION]))
# fmt: on

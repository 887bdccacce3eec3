"""Lifecycle operations: each action gets an id at once, then runs in the background.

An operation is ``pending`` until its task starts, ``running`` while it works (``step``
says on what, ``progress`` carries a pull's bytes), then ``succeeded`` or ``failed`` with a
``reason``. Finished operations are kept up to ``max_operations`` (the first to finish
dropped first); running ones are always kept, so memory stays bounded whatever the admin
does. At most one operation works on a model on a backend at a time: a second one is a 409
naming the first.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from nexus.fleet.errors import Conflict, OperationFailed

log = logging.getLogger("nexus.fleet")


class State(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(slots=True, eq=False)
class Operation:
    kind: str  # "load" | "unload" | "migrate"
    model: str
    backend: str  # where it loads or unloads; a migration's destination
    created_at: float
    source: str = ""  # a migration's origin
    pull: bool = False
    # Set while a pull is to run or runs (its model was not listed when it was asked for):
    # what the bounds on pulls at once count.
    pulling: bool = False
    evict: tuple[str, ...] = ()  # unloaded first, to make room (an applied recommendation)
    recommendation: str = ""  # the id of the recommendation it applies, if any
    id: str = field(default_factory=lambda: "op-" + secrets.token_hex(4))
    state: State = State.PENDING
    step: str = ""
    progress: dict[str, Any] | None = None  # {"status", "completed", "total"} of a pull
    reason: str = ""
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def done(self) -> bool:
        return self.state in (State.SUCCEEDED, State.FAILED)

    def touches(self) -> set[tuple[str, str]]:
        """The (backend, model) pairs it works on."""
        pairs = {(self.backend, self.model)} | {(self.backend, m) for m in self.evict}
        if self.source:
            pairs.add((self.source, self.model))
        return pairs

    def report(self, status: str, completed: int | None, total: int | None) -> None:
        self.progress = {"status": status, "completed": completed, "total": total}

    def describe(self) -> str:
        if self.kind == "migrate":
            return f"migrate {self.model} from {self.source} to {self.backend}"
        return f"{self.kind} {self.model} on {self.backend}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "model": self.model,
            "backend": self.backend,
            "source": self.source or None,
            "pull": self.pull,
            "evict": list(self.evict),
            "recommendation": self.recommendation or None,
            "state": self.state.value,
            "step": self.step,
            "progress": self.progress,
            "reason": self.reason or None,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


Work = Callable[[Operation], Awaitable[None]]


class Operations:
    """The operations log and the tasks that run them."""

    def __init__(self, keep: int, clock: Callable[[], float]) -> None:
        self.keep = keep
        self.clock = clock
        self._ops: dict[str, Operation] = {}  # oldest first
        self._tasks: set[asyncio.Task[None]] = set()

    def __iter__(self) -> Iterator[Operation]:
        return iter(reversed(list(self._ops.values())))  # newest first

    def get(self, op_id: str) -> Operation | None:
        return self._ops.get(op_id)

    def check_free(self, pairs: set[tuple[str, str]]) -> None:
        """Conflict unless no unfinished operation works on any of these (backend, model)."""
        for op in self._ops.values():
            if not op.done and op.touches() & pairs:
                raise Conflict(f"operation {op.id} ({op.describe()}) is still {op.state.value}")

    def start(self, op: Operation, work: Work) -> Operation:
        """Record ``op`` and run ``work(op)`` in the background (each step of the work
        bounds its own time: a pull may take hours, a load may not)."""
        self.check_free(op.touches())
        self._ops[op.id] = op
        self._prune()
        task = asyncio.create_task(self._run(op, work), name=f"fleet:{op.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return op

    async def stop(self) -> None:
        """Cancel what still runs (its operations fail: "Nexus stopped") and wait for it."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, op: Operation, work: Work) -> None:
        op.state, op.started_at = State.RUNNING, self.clock()
        log.info("operation %s started: %s", op.id, op.describe())
        try:
            await work(op)
        except OperationFailed as exc:
            self._fail(op, str(exc))
        except asyncio.CancelledError:
            self._fail(op, "Nexus stopped before it finished")
            raise
        except Exception:
            log.exception("operation %s failed", op.id)
            self._fail(op, "internal error in Nexus (see its log)")
        else:
            op.state, op.finished_at, op.step = State.SUCCEEDED, self.clock(), ""
            log.info("operation %s succeeded: %s", op.id, op.describe())
        finally:
            self._prune()

    def _fail(self, op: Operation, reason: str) -> None:
        op.state, op.finished_at, op.reason = State.FAILED, self.clock(), reason
        log.info("operation %s failed: %s: %s", op.id, op.describe(), reason)

    def _prune(self) -> None:
        # The first to finish go first: a long pull that just ended is still news.
        finished = sorted((op for op in self._ops.values() if op.done), key=_finish)
        for op in finished[: max(0, len(finished) - self.keep)]:
            del self._ops[op.id]


def _finish(op: Operation) -> float:
    return op.finished_at or 0.0

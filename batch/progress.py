"""How far a batch run is and how fast it goes: progress events and sdfleet's one images/s.

    images/s = images made this run / seconds from the start of the first of them
               (its pipeline call began) to the end of the last (its call returned)

The progress bar (up to now), the summary line and `summary.json` (up to the last image) and
each replica's figure (its own images, its own first start and last end) all come from
`images_per_s`, so they agree. Model loading and the replica pool's start-up are outside the
span; reading, encoding, writing and committing between calls are inside it.

Replicas report each pipeline call (`CallDone`); `RunProgress` counts them on the driver, with
the rows an earlier run already made, and tells the CLI's `Progress` callback in
`ProgressEvent`s. Pure: no torch, no ray, nothing printed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal


def images_per_s(images: int, seconds: float) -> float | None:
    """The rate of `images` made in `seconds` of wall time; None when there is none to give
    (no image, or no time yet): callers say "no images made", never "None images/s"."""
    if images <= 0 or seconds <= 0:
        return None
    return images / seconds


@dataclass
class RateClock:
    """Images made and the span they were made in (wall-clock seconds, `time.time()`)."""

    images: int = 0
    first_start: float | None = None
    last_finish: float | None = None

    def add(self, images: int, started_at: float, finished_at: float) -> None:
        self.images += images
        if self.first_start is None or started_at < self.first_start:
            self.first_start = started_at
        if self.last_finish is None or finished_at > self.last_finish:
            self.last_finish = finished_at

    def images_per_s(self, until: float | None = None) -> float | None:
        """`images_per_s` over first start -> `until` (default: the last finish)."""
        if self.first_start is None:
            return None
        end = self.last_finish if until is None else max(until, self.last_finish or until)
        return images_per_s(self.images, end - self.first_start)


@dataclass(frozen=True)
class CallDone:
    """A replica's report of one pipeline call: its outputs are written and counted."""

    worker: str  # host:pid of the replica
    images: int  # outputs of the call (ok, error and filtered rows alike)
    started_at: float  # time.time() when the call began
    finished_at: float  # ... and when its outputs were written


@dataclass(frozen=True)
class ProgressEvent:
    """What the CLI is told: the stage, outputs done (`skipped` + `made`), the rate so far."""

    stage: Literal["loading", "generating"]
    skipped: int  # outputs an earlier run committed (a resume starts there)
    made: int  # outputs made by this run so far
    images_per_s: float | None = None  # `images_per_s` of this run, up to this event
    detail: str = ""  # loading: what loads, e.g. "builtin:tiny on 2 replicas"

    @property
    def done(self) -> int:
        return self.skipped + self.made


Progress = Callable[[ProgressEvent], None]


def no_progress(event: ProgressEvent) -> None:
    """A `Progress` that shows nothing (benchmarks, library callers)."""


@dataclass
class RunProgress:
    """Counts one run's outputs from its replicas' `CallDone`s and tells `progress`."""

    progress: Progress
    skipped: int = 0
    total: RateClock = field(default_factory=RateClock)
    workers: dict[str, RateClock] = field(default_factory=dict)
    load_seconds: list[float] = field(default_factory=list)  # one per replica that loaded
    first_ready: float | None = None  # time.time() when the first replica had its model

    def loading(self, detail: str) -> None:
        """Before the model loads: the bar starts at the rows already done."""
        self.progress(ProgressEvent("loading", self.skipped, 0, detail=detail))

    def loaded(self, seconds: float, at: float | None = None) -> None:
        """A replica has its model (at `at`, default now), after `seconds` of loading."""
        at = time.time() if at is None else at
        self.load_seconds.append(seconds)
        self.first_ready = at if self.first_ready is None else min(self.first_ready, at)

    def call_done(self, call: CallDone) -> None:
        self.total.add(call.images, call.started_at, call.finished_at)
        self.workers.setdefault(call.worker, RateClock()).add(
            call.images, call.started_at, call.finished_at
        )
        rate = self.total.images_per_s(until=call.finished_at)
        self.progress(ProgressEvent("generating", self.skipped, self.total.images, rate))

    def images_per_s(self) -> float | None:
        return self.total.images_per_s()

    def per_replica(self) -> dict[str, float]:
        """Each replica's `images_per_s` over its own span, first reported first."""
        rates = {name: clock.images_per_s() for name, clock in self.workers.items()}
        return {name: rate for name, rate in rates.items() if rate is not None}

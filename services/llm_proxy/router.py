"""Choosing deployments: strategies, priorities, fallbacks, circuit breakers, latency EWMA.

The router keeps per-deployment state (breaker, latency) by deployment name, so it survives a
config reload for deployments that stay. State is per replica: a dead upstream is found by each
replica within ``breaker.failures`` calls, which is cheaper than a shared store on every call.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field

from services.llm_proxy.catalog import Alias, Breaker, Catalog, Deployment
from services.llm_proxy.policy import Policies

CLOSED, OPEN, HALF_OPEN = 0, 1, 2
STATE_NAMES = {CLOSED: "closed", OPEN: "open", HALF_OPEN: "half_open"}


class CircuitBreaker:
    """Opens after N consecutive failures or a failure ratio; one probe after the cooldown."""

    def __init__(self, opts: Breaker) -> None:
        self.opts = opts
        self.state = CLOSED
        self.opened_at = 0.0
        self.consecutive = 0
        self.recent: deque[bool] = deque(maxlen=opts.window)
        self.probing = False

    def retry_in(self, now: float) -> float:
        return max(0.0, self.opened_at + self.opts.cooldown_s - now)

    def allow(self, now: float) -> bool:
        if self.state == OPEN:
            if now < self.opened_at + self.opts.cooldown_s:
                return False
            self.state = HALF_OPEN
            self.probing = False
        if self.state == HALF_OPEN:
            if self.probing:
                return False
            self.probing = True
        return True

    def release(self) -> None:
        """The call ended without a verdict (client went away): let another probe through."""
        self.probing = False

    def record(self, ok: bool, now: float) -> None:
        if self.state == HALF_OPEN:
            self.probing = False
            if ok:
                self._close()
            else:
                self._open(now)
            return
        self.recent.append(ok)
        self.consecutive = 0 if ok else self.consecutive + 1
        if self.state == CLOSED and not ok:
            failures = self.recent.count(False)
            if self.consecutive >= self.opts.failures or (
                len(self.recent) >= self.opts.min_calls
                and failures / len(self.recent) >= self.opts.failure_ratio
            ):
                self._open(now)

    def _open(self, now: float) -> None:
        self.state = OPEN
        self.opened_at = now

    def _close(self) -> None:
        self.state = CLOSED
        self.consecutive = 0
        self.recent.clear()


@dataclass
class DeploymentState:
    deployment: Deployment
    api_key: str | None
    breaker: CircuitBreaker
    ewma_s: float | None = None
    calls: int = 0

    def observe_latency(self, seconds: float, alpha: float) -> None:
        self.ewma_s = (
            seconds if self.ewma_s is None else alpha * seconds + (1 - alpha) * (self.ewma_s)
        )


@dataclass(frozen=True)
class Candidate:
    alias: str  # the alias this deployment was reached through (differs on fallback)
    state: DeploymentState


@dataclass
class AliasPrices:
    """The dearest prices reachable from an alias: budgets reserve against these."""

    input_per_1k: float = 0.0
    output_per_1k: float = 0.0
    chain: list[str] = field(default_factory=list)


class Router:
    def __init__(self, catalog: Catalog, keys: dict[str, str | None]) -> None:
        self.states: dict[str, DeploymentState] = {}
        self.catalog = catalog
        self.prices: dict[str, AliasPrices] = {}
        self.modes: dict[str, str] = {}
        self.swap(catalog, keys)

    def swap(self, catalog: Catalog, keys: dict[str, str | None]) -> None:
        """Install a new catalog; breakers and latencies carry over by deployment name."""
        states: dict[str, DeploymentState] = {}
        for d in catalog.deployments:
            old = self.states.get(d.name)
            if old is not None and old.breaker.opts == catalog.router.breaker:
                states[d.name] = DeploymentState(
                    d, keys.get(d.name), old.breaker, old.ewma_s, old.calls
                )
            else:
                states[d.name] = DeploymentState(
                    d, keys.get(d.name), CircuitBreaker(catalog.router.breaker)
                )
        prices = {}
        for alias, spec in catalog.aliases.items():
            if spec.routing is not None:
                continue  # it hands each request to a target alias: that one's prices apply
            chain = self._chain(catalog, alias)
            deps = [
                catalog.deployment(t.deployment)
                for a in chain
                for t in catalog.aliases[a].deployments
            ]
            prices[alias] = AliasPrices(
                max(d.input_cost_per_1k for d in deps),
                max(d.output_cost_per_1k for d in deps),
                chain,
            )
        # Per alias, once per config: the request path looks these up, never scans the catalog.
        modes = {alias: catalog.mode(alias) for alias in catalog.aliases}
        policies = Policies.build(catalog)
        self.catalog, self.states, self.prices, self.modes = catalog, states, prices, modes
        self.policies = policies

    @staticmethod
    def _chain(catalog: Catalog, alias: str) -> list[str]:
        """The alias, then its fallbacks depth-first, each once."""
        out: list[str] = []
        stack = [alias]
        while stack:
            name = stack.pop(0)
            if name in out:
                continue
            out.append(name)
            stack = list(catalog.aliases[name].fallbacks) + stack
        return out

    def plan(self, alias: str) -> list[Candidate]:
        """Every deployment to try, in order: by priority, by strategy, then each fallback."""
        out: list[Candidate] = []
        seen: set[str] = set()
        for name in self.prices[alias].chain:
            for state in self._order(self.catalog.aliases[name]):
                if state.deployment.name not in seen:
                    seen.add(state.deployment.name)
                    out.append(Candidate(name, state))
        return out

    def _order(self, spec: Alias) -> list[DeploymentState]:
        by_priority: dict[int, list[tuple[float, DeploymentState]]] = {}
        for t in spec.deployments:
            by_priority.setdefault(t.priority, []).append((t.weight, self.states[t.deployment]))
        ordered: list[DeploymentState] = []
        for priority in sorted(by_priority):
            group = by_priority[priority]
            if spec.strategy == "weighted":
                ordered.extend(_weighted_shuffle(group))
            elif spec.strategy == "least-latency":
                # Unmeasured deployments first, so each gets measured; ties at random.
                random.shuffle(group)
                group.sort(key=lambda ws: -1.0 if ws[1].ewma_s is None else ws[1].ewma_s)
                ordered.extend(s for _, s in group)
            else:
                random.shuffle(group)
                group.sort(
                    key=lambda ws: (
                        ws[1].deployment.input_cost_per_1k + ws[1].deployment.output_cost_per_1k
                    )
                )
                ordered.extend(s for _, s in group)
        return ordered

    def alias_deployments(self) -> set[tuple[str, str]]:
        """(alias, deployment) for every deployment that can answer an alias, fallbacks
        included: what an alert needs to tell "every circuit of this alias is open"."""
        return {
            (alias, t.deployment)
            for alias, prices in self.prices.items()
            for a in prices.chain
            for t in self.catalog.aliases[a].deployments
        }

    def breaker_states(self) -> dict[str, int]:
        now = time.monotonic()
        out = {}
        for name, state in self.states.items():
            b = state.breaker
            if b.state == OPEN and now >= b.opened_at + b.opts.cooldown_s:
                out[name] = HALF_OPEN
            else:
                out[name] = b.state
        return out


def _weighted_shuffle(group: list[tuple[float, DeploymentState]]) -> list[DeploymentState]:
    """Order by weighted random sampling without replacement (Efraimidis-Spirakis)."""
    if len(group) == 1:
        return [group[0][1]]
    keyed = [(random.random() ** (1.0 / w), s) for w, s in group]
    keyed.sort(key=lambda ks: ks[0], reverse=True)
    return [s for _, s in keyed]

"""Online A/B: which variant answers a request.

A variant is a name, a target (a checkpoint directory or an OpenAI-compatible URL) and a weight.
Requests that name a user are split by hashing the user, so one person always sees the same model
(no flip-flopping between answers of two models within a session, and a comparison per user stays
clean); requests without a user are split by weight at random.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

from errors import UserError


@dataclass(frozen=True)
class Route:
    name: str
    target: str  # a checkpoint directory, or http(s)://HOST:PORT[/v1][#MODEL]
    weight: float = 1.0

    @property
    def remote(self) -> bool:
        return self.target.startswith(("http://", "https://"))


def parse_route(text: str) -> Route:
    """``NAME=URL_OR_CHECKPOINT:WEIGHT`` (``:WEIGHT`` optional, default 1). The weight is what
    follows the last colon, except after a bare ``http://HOST``: ``http://host:8000`` is a URL
    (weight 1), ``http://host:8000:0.1`` the same URL with weight 0.1."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise UserError(f"--route {text!r}: expected NAME=URL_OR_CHECKPOINT:WEIGHT, e.g. new=checkpoints/run:0.1")
    target, weight = rest, 1.0
    head, colon, tail = rest.rpartition(":")
    # http://host:8000 is a URL with its port, not http://host with weight 8000: a URL's weight
    # follows the port (or path, or #MODEL) of a URL that is whole without it.
    url_without_weight = head.startswith(("http://", "https://")) and not any(c in head.split("//", 1)[1] for c in ":/#")
    if colon and head and "/" not in tail and not url_without_weight:
        try:
            weight = float(tail)
        except ValueError:
            raise UserError(f"--route {text!r}: the weight {tail!r} is not a number") from None
        target = head
    if not math.isfinite(weight) or weight < 0:
        raise UserError(f"--route {text!r}: the weight must be a finite number >= 0")
    return Route(name.strip(), target, weight)


class Router:
    """Weighted, sticky choice among routes."""

    def __init__(self, routes: list[Route], rng: random.Random | None = None) -> None:
        names = [r.name for r in routes]
        if not routes:
            raise UserError("no model to serve: give --checkpoint DIR, --backend URL or --route NAME=TARGET:WEIGHT")
        if len(set(names)) != len(names):
            raise UserError(f"--route: variant names must differ, got {names}")
        total = sum(r.weight for r in routes)
        if total <= 0:
            raise UserError("--route: at least one weight must be above 0")
        self.routes = routes
        self._bounds: list[float] = []
        acc = 0.0
        for r in routes:
            acc += r.weight / total
            self._bounds.append(acc)
        self._rng = rng or random.Random()

    def choose(self, user: str | None) -> Route:
        """The route for ``user`` (always the same one for the same user and weights), or a
        weighted random one when there is no user."""
        if user:
            digest = hashlib.sha256(user.encode("utf-8", "surrogatepass")).digest()
            point = int.from_bytes(digest[:8], "big") / 2**64
        else:
            point = self._rng.random()
        for route, bound in zip(self.routes, self._bounds):
            if point < bound and route.weight > 0:
                return route
        return next(r for r in reversed(self.routes) if r.weight > 0)

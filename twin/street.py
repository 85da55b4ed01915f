"""Street scenarios for the vehicle twin: a Sionna RT scene, a base station, lanes and traffic.

Geometry is described along the street: the base station (BS) stands at ``bs_xy`` facing ``facing`` (a
horizontal unit vector across the street); a vehicle at along-street coordinate ``s`` in a lane at distance
``d`` from the BS is at ``bs_xy + d * facing + s * axis``, where ``axis`` is ``facing`` turned by -90 deg.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class StreetScenario:
    """One DeepSense-style scenario: scene, BS placement, lanes and traffic."""

    scene: str                                  # a scene shipped with sionna-rt
    bs_xy: tuple[float, float]
    bs_height: float
    facing: tuple[float, float]
    ue_lane: float                              # distance BS -> lane of the equipped vehicle (unit2)
    blocker_lanes: tuple[float, ...]            # lanes of the other traffic (between BS and UE lane)
    span: tuple[float, float] | None = None     # recorded along-street segment; default +-1.2 x UE lane distance
    ue_direction: int = 1
    n_cars: int = 3
    n_trucks: int = 2
    ue_speed: tuple[float, float] = (6.0, 13.0)       # m/s
    blocker_speed: tuple[float, float] = (3.0, 15.0)  # m/s
    bs_latlon: tuple[float, float] = (33.4207, -111.9292)

    @property
    def segment(self) -> tuple[float, float]:
        """The recorded stretch of street: LoS angles up to ~50 deg, a little beyond the +-42 deg codebook."""
        return self.span if self.span is not None else (-1.2 * self.ue_lane, 1.2 * self.ue_lane)

    @property
    def axis(self) -> np.ndarray:
        f = np.asarray(self.facing, float)
        return np.array([f[1], -f[0]])

    def ground_point(self, lane: float, s: float) -> np.ndarray:
        return np.asarray(self.bs_xy, float) + lane * np.asarray(self.facing, float) + s * self.axis

    @property
    def heading(self) -> float:
        """Yaw (radians) of a vehicle driving towards +axis."""
        a = self.axis
        return float(np.arctan2(a[1], a[0]))


# Sionna's street canyon: the main street runs along x between buildings at y = -8.6 and y = 9.6, cross
# streets along y at x in [-31, -15] and [16, 31.5]; the *_with_cars variant has parked cars at
# y in [-5.8, -4] and [4.7, 6.5].
TEMPLATES = (
    StreetScenario("simple_street_canyon", (-5.0, -7.6), 3.0, (0.0, 1.0), 9.6, (2.7, 5.8), ue_direction=1),
    StreetScenario("simple_street_canyon_with_cars", (20.0, 8.6), 2.6, (0.0, -1.0), 10.4, (6.6,), ue_direction=-1,
                   n_cars=2, n_trucks=2, bs_latlon=(33.4210, -111.9301)),
    StreetScenario("simple_street_canyon", (-30.0, -20.0), 3.5, (1.0, 0.0), 10.5, (3.0, 6.5), n_cars=3, n_trucks=1, ue_speed=(5.0, 10.0), bs_latlon=(33.4195, -111.9310)),
    StreetScenario("simple_street_canyon_with_cars", (-45.0, -7.6), 4.0, (0.0, 1.0), 9.6, (5.8,), ue_direction=-1,
                   n_cars=3, n_trucks=2, ue_speed=(8.0, 15.0), bs_latlon=(33.4220, -111.9280)),
)


def scenario(k: int, seed: int) -> StreetScenario:
    """Scenario ``k`` (0-based): the templates first, then seeded variations of them."""
    base = TEMPLATES[k % len(TEMPLATES)]
    if k < len(TEMPLATES):
        return base
    rng = np.random.default_rng([seed, k])
    shift = rng.uniform(-12, 12) * base.axis
    return replace(base, bs_xy=tuple(np.asarray(base.bs_xy) + shift), bs_height=float(rng.uniform(2.2, 4.5)),
                   n_cars=int(rng.integers(1, 5)), n_trucks=int(rng.integers(0, 3)),
                   ue_direction=int(rng.choice([-1, 1])),
                   bs_latlon=(base.bs_latlon[0] + rng.uniform(-0.01, 0.01), base.bs_latlon[1] + rng.uniform(-0.01, 0.01)))


@dataclass
class Mover:
    """A vehicle driving at constant speed in a lane, wrapping around a stretch of street."""

    lane: float
    s0: float
    speed: float          # signed, along the street axis
    truck: bool
    wrap: tuple[float, float]

    def s(self, t: float) -> float:
        lo, hi = self.wrap
        return lo + (self.s0 - lo + self.speed * t) % (hi - lo)


def traffic(sc: StreetScenario, rng: np.random.Generator) -> list[Mover]:
    """Cars and trucks in the blocker lanes (either direction), spread along the street."""
    wrap = (sc.segment[0] - 40.0, sc.segment[1] + 40.0)
    movers = []
    for i in range(sc.n_cars + sc.n_trucks):
        lane = sc.blocker_lanes[i % len(sc.blocker_lanes)]
        direction = rng.choice([-1.0, 1.0])
        movers.append(Mover(lane, float(rng.uniform(*wrap)), float(direction * rng.uniform(*sc.blocker_speed)),
                            i >= sc.n_cars, wrap))
    return movers

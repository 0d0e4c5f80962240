"""Pareto extraction on planted sets whose front is known by construction."""

import math
import random

from fissure.metrics.pareto import dominates, pareto_front, weighted_choice


def test_planted_front_among_dominated_points():
    rng = random.Random(0)
    # the front: points on the quarter circle x^2 + y^2 = 1 (none dominates another)
    front = [(math.cos(a), math.sin(a)) for a in (0.1, 0.4, 0.7, 1.0, 1.3)]
    # below the circle: each is dominated by some front point (shrunk towards the origin)
    inside = [(x * s, y * s) for x, y in front for s in (rng.uniform(0.3, 0.95) for _ in range(4))]
    points = inside[:7] + front[:2] + inside[7:] + front[2:]
    rng.shuffle(points)
    got = pareto_front(points)
    assert sorted(points[i] for i in got) == sorted(front)
    assert got == sorted(got)


def test_minimised_objectives_duplicates_and_nan():
    points = [(1.0, 5.0), (2.0, 3.0), (2.0, 3.0), (3.0, 1.0), (3.0, 4.0), (math.nan, 0.0)]
    assert pareto_front(points) == [0, 4]
    # minimise both: (1,5) (2,3) twice (3,1) are non-dominated; duplicates stay together
    assert pareto_front(points, maximise=[False, False]) == [0, 1, 2, 3]
    # quality up, diversity down
    assert pareto_front([(1, 1), (2, 2), (2, 1)], maximise=[True, False]) == [2]
    assert pareto_front([]) == []
    assert dominates((2, 2), (2, 1)) and not dominates((2, 1), (2, 1))


def test_weighted_choice_moves_along_the_front_with_the_weight():
    points = [(0.0, 1.0), (0.6, 0.8), (0.8, 0.6), (1.0, 0.0)]
    assert weighted_choice(points, (1.0, 0.0), [0, 1, 2, 3]) == 3
    assert weighted_choice(points, (0.0, 1.0), [0, 1, 2, 3]) == 0
    assert weighted_choice(points, (0.5, 0.5), [0, 1, 2, 3]) == 1  # 1 and 2 tie at 0.7: the first
    assert weighted_choice(points, (0.5, 0.5), [0, 3]) == 0  # a tie: the first

"""--search's choice: cross-validation folds that keep copies together, and the one-standard-error
rule (the simplest candidate not measurably worse than the most accurate). The whole search on
real images, and that the test split never influences it, is in test_test_isolation.py."""

from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from retrainer.data.split import VALIDATION, assign_split, fold_of
from retrainer.pipeline.search import Score, choose


def score(correct: list[bool], loss: float = 0.5) -> Score:
    return Score(np.array(correct), np.full(len(correct), loss))


def test_folds_are_stable_balanced_and_keep_nohash_copies_together():
    names = [f"class{index % 3}/photo_{index}.jpg" for index in range(3000)]
    folds = [fold_of(name, 5) for name in names]
    assert folds == [fold_of(name, 5) for name in names]
    assert all(500 < count < 700 for count in Counter(folds).values())
    assert len({fold_of(f"roses/rose_nohash_{copy}.jpg", 5) for copy in range(20)}) == 1
    # independent of the split's hash: the validation images are spread over every fold
    validation = [name for name in names if assign_split(name, 10, 10) == VALIDATION]
    assert {fold_of(name, 5) for name in validation} == set(range(5))


def test_a_simpler_candidate_within_one_standard_error_is_chosen():
    # 200 images: the most accurate (index 2) beats index 0 by 2 images out of 200 with 6
    # disagreements, well within noise; index 1 is clearly worse.
    reference = [True] * 180 + [False] * 20
    tied = list(reference)
    for position in (0, 1, 2, 3):
        tied[position] = False
    for position in (180, 181):
        tied[position] = True
    worse = [True] * 150 + [False] * 50
    best, chosen, errors = choose({0: score(tied), 1: score(worse), 2: score(reference)})
    assert (best, chosen) == (2, 0)
    assert errors[2] == 0.0 and 0 < errors[0] < 0.02 < 0.9 - 0.75


def test_a_clearly_better_candidate_is_chosen_over_a_simpler_one():
    simple = [True] * 120 + [False] * 80
    better = [True] * 170 + [False] * 30
    assert choose({0: score(simple), 1: score(better)})[:2] == (1, 1)


def test_exact_ties_go_to_the_lower_cross_entropy_then_the_simpler():
    same = [True] * 9 + [False]
    assert choose({0: score(same, 0.6), 1: score(same, 0.4)})[:2] == (1, 0)
    assert choose({3: score(same), 5: score(same)})[:2] == (3, 3)


@given(st.integers(1, 6), st.integers(1, 40), st.integers(0, 2**16))
def test_the_choice_is_never_measurably_worse_than_the_best(candidates, images, seed):
    rng = np.random.default_rng(seed)
    scores = {index: Score(rng.random(images) < rng.random(), rng.random(images))
              for index in range(candidates)}
    best, chosen, errors = choose(scores)
    assert scores[best].accuracy == max(score.accuracy for score in scores.values())
    assert scores[best].accuracy - scores[chosen].accuracy <= errors[chosen]
    assert all(scores[best].accuracy - scores[index].accuracy > errors[index]
               for index in scores if index < chosen)

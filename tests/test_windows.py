import copy

import pytest
import torch

from flowrl.samplers import DecayingWindow, ProgressiveWindow, RandomWindow, WindowSchedule, make_window


def _starts(schedule, n):
    out = []
    for _ in range(n):
        out.append(schedule.start)
        schedule.advance()
    return out


def test_fixed_window_never_moves():
    w = make_window("fixed", 10, 4, start=3)
    assert _starts(w, 5) == [3] * 5
    assert w.window == range(3, 7)
    assert w.sde_mask().tolist() == [False] * 3 + [True] * 4 + [False] * 3


def test_progressive_window_shifts_and_rolls_back():
    w = ProgressiveWindow(num_steps=10, size=3, stride=2, shift_interval=2)
    # max start 7: 0,2,4,6 then 8 > 7 rolls back to 0
    assert _starts(w, 11) == [0, 0, 2, 2, 4, 4, 6, 6, 0, 0, 2]


def test_decaying_window_speeds_up_and_resets_on_roll_back():
    w = DecayingWindow(num_steps=10, size=2, stride=1, shift_interval=4, decay=0.5, min_interval=1)
    assert _starts(w, 18) == [0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 1]


def test_random_window_stays_in_range_and_is_seeded():
    a = RandomWindow(num_steps=16, size=2, min_start=1, max_start=6, seed=7)
    b = RandomWindow(num_steps=16, size=2, min_start=1, max_start=6, seed=7)
    starts = _starts(a, 200)
    assert starts == _starts(b, 200)
    assert set(starts) == set(range(1, 7))  # every allowed start occurs, nothing else


@pytest.mark.parametrize(
    "make",
    [
        lambda: ProgressiveWindow(12, 3, stride=1, shift_interval=3),
        lambda: DecayingWindow(12, 3, shift_interval=5, decay=0.7),
        lambda: RandomWindow(12, 3, seed=1),
        lambda: WindowSchedule(12, 3, start=2),
    ],
)
def test_save_and_restore_continues_exactly(make):
    w = make()
    _starts(w, 7)  # stop mid-interval
    state = copy.deepcopy(w.state_dict())
    expected = _starts(w, 20)
    restored = make()
    restored.load_state_dict(state)
    assert _starts(restored, 20) == expected
    assert restored.iteration == w.iteration


def test_bad_window_arguments():
    with pytest.raises(ValueError, match="window size"):
        make_window("fixed", 5, 6)
    with pytest.raises(ValueError, match=r"unknown window schedule 'sliding'.*progressive"):
        make_window("sliding", 5, 2)
    with pytest.raises(ValueError, match="state is for 'random'"):
        ProgressiveWindow(5, 2).load_state_dict(RandomWindow(5, 2).state_dict())
    with pytest.raises(ValueError, match="min_start"):
        RandomWindow(8, 3, min_start=4, max_start=2)
    assert isinstance(WindowSchedule(4, 4).sde_mask(), torch.Tensor)

"""The token bucket (docs/PROTOCOL.md: Rate limit), driven by a hand-held clock."""

import pytest

from ratelimit import TokenBucket


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_full_bucket_allows_a_burst_then_refuses():
    """When a client sends `burst` messages at once, all pass and the next is refused."""
    clock = Clock()
    bucket = TokenBucket(rate=1.0, burst=5, clock=clock)
    assert [bucket.try_take() for _ in range(5)] == [0.0] * 5
    assert bucket.try_take() == pytest.approx(1.0)


def test_refusal_says_when_the_next_token_arrives():
    """When refused, the wait is the time until one whole token has flowed in."""
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=1, clock=clock)
    assert bucket.try_take() == 0.0
    clock.now += 0.2  # 0.4 of a token back
    assert bucket.try_take() == pytest.approx(0.3)


def test_tokens_refill_from_elapsed_time_up_to_burst():
    """When the client is idle, tokens come back at `rate` but never beyond `burst`."""
    clock = Clock()
    bucket = TokenBucket(rate=1.0, burst=3, clock=clock)
    for _ in range(3):
        bucket.try_take()
    clock.now += 1.0
    assert bucket.try_take() == 0.0
    assert bucket.try_take() > 0
    clock.now += 1000
    assert [bucket.try_take() for _ in range(4)][:3] == [0.0] * 3
    assert bucket.try_take() > 0


def test_clock_going_backwards_adds_nothing():
    """When the clock steps back, the bucket neither refills nor breaks."""
    clock = Clock()
    bucket = TokenBucket(rate=1.0, burst=1, clock=clock)
    bucket.try_take()
    clock.now -= 50
    assert bucket.try_take() > 0


@pytest.mark.parametrize("rate,burst", [(0, 5), (-1, 5), (1, 0)])
def test_nonsense_settings_are_refused(rate, burst):
    """When rate or burst make no sense, the bucket refuses to exist."""
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)

import pytest

from ssjobs import scaling


@pytest.mark.parametrize("backlog, health, current, maximum, want", [
    (0, 100, 0, 4, 0),        # healthy: nothing to add
    (100, 100, 2, 4, 0),      # at the threshold is still healthy; running ones retire alone
    (101, 100, 0, 4, 1),      # just unhealthy: ramp one at a time
    (500, 100, 1, 4, 2),
    (500, 100, 4, 4, 4),      # never above the maximum
    (1001, 100, 0, 4, 4),     # a huge backlog: straight to the maximum
    (10_000, 0, 0, 4, 0),     # queue_health_size 0 = never check
    (10_000, 100, 0, 0, 0),   # no dynamic workers configured
])
def test_dynamic_target(backlog, health, current, maximum, want):
    assert scaling.dynamic_target(backlog, health, current, maximum) == want


@pytest.mark.parametrize("crashes, delay", [(0, 0), (1, 0.5), (2, 1), (3, 2), (6, 16),
                                            (7, 30), (50, 30)])
def test_crash_backoff_doubles_up_to_a_cap(crashes, delay):
    assert scaling.crash_backoff(crashes) == delay


@pytest.mark.parametrize("lifetime, clean, done, quick", [
    (1, False, 0, True),      # died at once, nothing done: a crash loop
    (1, True, 0, False),      # asked to stop
    (1, False, 5, False),     # it did work: a poison job is charged instead
    (60, False, 0, False),    # lived long enough
])
def test_quick_crash(lifetime, clean, done, quick):
    assert scaling.is_quick_crash(lifetime, clean, done) is quick

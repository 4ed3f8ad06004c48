"""The parameter bus: validation, snapshots, coalescing, bounded-rate feedback."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import replace

import pytest

from engine.errors import MgsteerError
from engine.params import Knob, ParameterBus


def test_knob_curves_map_onto_alpha_range():
    knob = Knob(lo=-1.0, hi=1.0, value=0.25)
    assert knob.alpha() == pytest.approx(-0.5)
    assert Knob(lo=0, hi=2, curve="exp", value=0.5).alpha() == pytest.approx(0.5)
    assert Knob(lo=0, hi=2, curve="log", value=0.25).alpha() == pytest.approx(1.0)


def test_alphas_sum_knobs_and_direct_strengths():
    bus = ParameterBus(knob_count=2, feature_count=100)
    bus.configure_knob(0, label="brass", features=[(3, 1.0), (7, 0.5)], lo=0, hi=2)
    bus.configure_knob(1, features=[(7, -1.0)])
    bus.set_knob(0, 0.5)
    bus.set_knob(1, 1.0)
    bus.set_feature(3, 0.25)
    alphas = bus.snapshot().alphas()
    assert alphas == pytest.approx({3: 1.25, 7: 0.5 - 1.0})
    bus.set_feature(3, 0.0)
    assert bus.snapshot().alphas()[3] == pytest.approx(1.0)


def test_snapshot_is_immutable_and_only_rebuilt_after_a_change():
    bus = ParameterBus()
    a = bus.snapshot()
    assert bus.snapshot() is a
    bus.set_knob(0, 0.5)
    b = bus.snapshot()
    assert b is not a and b.version > a.version and b.knobs[0].value == 0.5 and a.knobs[0].value == 0.0
    with pytest.raises(TypeError):
        b.features[1] = 2.0
    with pytest.raises(AttributeError):
        b.prompt = "x"


def test_values_are_validated_or_clamped():
    bus = ParameterBus(knob_count=4, feature_count=10)
    assert bus.set_knob(0, 1.7) == 1.0 and bus.set_knob(0, -3) == 0.0
    for call, needle in [
        (lambda: bus.set_knob(0, math.nan), "must be a number, got nan"),
        (lambda: bus.set_knob(9, 0.5), "unknown knob 9"),
        (lambda: bus.set_knob(0, "loud"), "must be a number"),
        (lambda: bus.set_feature(10, 1.0), "unknown feature id 10: features are 0..9"),
        (lambda: bus.set_feature(2, math.inf), "must be finite"),
        (lambda: bus.configure_knob(1, curve="cubic"), "unknown knob curve"),
        (lambda: bus.configure_knob(1, features=[(99, 1.0)]), "unknown feature id 99"),
        (lambda: bus.set_prompt("   "), "must not be empty"),
        (lambda: bus.set_smoothing(-5), "between 0 and 10000"),
        (lambda: bus.set_smoothing(math.nan), "must be finite"),
        (lambda: bus.set_smoothing(math.inf), "must be finite"),
        (lambda: bus.set_prompt("x " * 5000), "the limit is 256 tokens"),
        (lambda: bus.configure_knob(1, lo=-1e30), "between -50 and 50"),
        (lambda: bus.configure_knob(1, features=[(2, 1e9)]), "between -10 and 10"),
        (lambda: bus.configure_knob(1, label="x" * 500), "at most 200 characters"),
    ]:
        with pytest.raises(MgsteerError, match=needle):
            call()


def test_strengths_clamp_like_a_knob_at_its_end():
    """A musician's far value is the strongest value, not an end to the music."""
    bus = ParameterBus(knob_count=2, feature_count=10)
    assert bus.set_feature(3, 1e30) == 50.0 and bus.set_feature(4, -1e300) == -50.0
    assert bus.set_feature(5, 2.5) == 2.5 and bus.set_knob(0, 1e30) == 1.0
    bus.configure_knob(0, features=[(3, 10.0)], lo=0.0, hi=50.0)  # 50 + 50·10 on feature 3
    alphas = bus.snapshot().alphas()
    assert alphas == {3: 50.0, 4: -50.0, 5: 2.5}


@pytest.mark.parametrize("smoothing", [math.nan, -5.0, math.inf, 1e9])
def test_a_bad_smoothing_is_refused_at_construction_too(smoothing):
    with pytest.raises(MgsteerError, match="smoothing"):
        ParameterBus(smoothing_ms=smoothing)


def test_transport_and_prompt():
    bus = ParameterBus(prompt="a")
    bus.stop()
    assert not bus.snapshot().playing
    bus.play()
    bus.reset()
    bus.set_prompt("  calm piano ")
    snap = bus.snapshot()
    assert snap.playing and snap.reset_count == 1 and snap.prompt == "calm piano"


def test_concurrent_writers_keep_every_final_value():
    bus = ParameterBus(knob_count=4, feature_count=50)

    def writer(i):
        for n in range(5000):
            bus.set_knob(i, (n % 100) / 100)
            bus.set_feature(10 + i, n / 5000)
        bus.set_knob(i, 0.123 * (i + 1))
        bus.set_feature(10 + i, -float(i + 1))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = bus.snapshot()
    assert [k.value for k in snap.knobs] == pytest.approx([0.123 * (i + 1) for i in range(4)])
    assert {f: snap.features[f] for f in range(10, 14)} == {10 + i: -float(i + 1) for i in range(4)}
    assert snap.version == 4 * (2 * 5000 + 2)  # no update lost between threads


def test_feedback_is_rate_limited_and_ends_on_the_latest_values():
    bus = ParameterBus(knob_count=1, feedback_hz=30)
    got = []
    unsubscribe = bus.subscribe(got.append)
    started = time.perf_counter()
    n = 0
    while time.perf_counter() - started < 1.0:
        bus.set_knob(0, (n % 1000) / 1000)
        bus.publish_meters({5: n / 1e4})
        n += 1
    bus.set_knob(0, 0.777)
    time.sleep(0.3)
    unsubscribe()
    bus.close()
    assert n > 1000
    assert 5 <= len(got) <= 1.3 * 30 * 1.3 + 2
    last_knobs = next(f.knobs for f in reversed(got) if f.knobs)
    assert last_knobs[0].value == pytest.approx(0.777)
    assert any(f.meters for f in got)


@pytest.mark.parametrize("curve", ["linear", "exp", "log"])
def test_a_knob_finds_the_value_of_an_alpha(curve):
    knob = Knob(lo=-2.0, hi=6.0, curve=curve)
    for alpha in (-2.0, 0.0, 1.5, 6.0):
        assert replace(knob, value=knob.value_for(alpha)).alpha() == pytest.approx(alpha)
    assert knob.value_for(-9.0) == 0.0 and knob.value_for(9.0) == 1.0 and knob.bipolar
    assert not Knob(lo=0.0, hi=1.0).bipolar

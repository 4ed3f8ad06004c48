"""OSC flood while playing: how many messages a second reach the server, and whether the
engine keeps real time meanwhile.

A second process floods four knob addresses over UDP at `--rate` messages a second while the
engine plays the tiny model into a null sink with those knobs steering. Prints one JSON object:
the rate actually sent (`sent_per_s`), what the server received, coalesced and applied,
the underruns during the flood and the engine's speed (`x_realtime`, audio seconds per wall
second). A rate or an underrun count depends on how busy the machine is, so these are
figures to read here, not assertions in the tests (tests/test_osc.py checks the behaviour).

    python bench/osc_flood.py [--seconds 10] [--rate 11000]
    python bench/osc_flood.py --features 32768 [--seconds 8]   # a fader over a large steering set
    python bench/osc_flood.py --send PORT SECONDS RATE     # the flooding process alone

`--features N`: N features steered at once (set on the bus, as a preset or OSC would), then a
60 Hz fader on one of them over OSC, against an SAE of N features. Run twice in one process:
`incremental` (the engine: the steering sum updated by what changed) and `rebuilt` (the sum
made afresh at every change, as before), with the underruns and steps of each.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import subprocess
import sys
import time

from common import machine
from pythonosc.osc_message_builder import OscMessageBuilder


def send(port: int, seconds: float, rate: int) -> float:
    """Send knob values to 127.0.0.1:`port` at about `rate` messages a second; the rate sent.
    A rate under 100 is a fader: feature 0's strength, one value at a time."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    msgs = []
    for i in range(100):
        builder = OscMessageBuilder(address=f"/mgsteer/knob/{i % 4}")
        builder.add_arg(i / 100.0)
        msgs.append(builder.build().dgram)
    if rate < 100:  # a fader: one message at a time, each a new value
        return _fade(sock, port, seconds, rate)
    sent, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for m in msgs:
            sock.sendto(m, ("127.0.0.1", port))
        sent += len(msgs)
        ahead = sent / rate - (time.perf_counter() - start)
        if ahead > 0:
            time.sleep(ahead)
    return sent / (time.perf_counter() - start)


def _fade(sock: socket.socket, port: int, seconds: float, rate: int) -> float:
    sent, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        builder = OscMessageBuilder(address="/mgsteer/feature/0")
        builder.add_arg(float(2 * math.sin(sent / 10)))
        sock.sendto(builder.build().dgram, ("127.0.0.1", port))
        sent += 1
        ahead = sent / rate - (time.perf_counter() - start)
        if ahead > 0:
            time.sleep(ahead)
    return sent / (time.perf_counter() - start)


def flood_process(port: int, seconds: float, rate: int) -> subprocess.Popen:
    """The flood, from another process so that it does not share this one's interpreter lock."""
    command = [sys.executable, __file__, "--send", str(port), str(seconds), str(rate)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def measure(seconds: float, rate: int) -> dict:
    from stream import make_sae

    from engine.audio import NullSink
    from engine.host import Host, HostConfig
    from engine.model import load_musicgen
    from engine.params import ParameterBus
    from osc.server import OscServer

    lm = load_musicgen("tiny", "cpu")
    sae = make_sae(lm, expansion=4, k=8)
    bus = ParameterBus(knob_count=4, feature_count=sae.cfg.d_sae)
    for knob in range(4):
        bus.configure_knob(knob, features=[(knob, 0.5)])
    host = Host(lm, bus, NullSink(lm.sample_rate), sae, HostConfig())
    server = OscServer(bus, port=0, status=lambda: {"underruns": host.status().underruns})
    host.start()
    server.start()
    try:
        time.sleep(1.0)
        before = host.status()
        flood = flood_process(server.address[1], seconds, rate)
        sent_per_s = float(flood.communicate(timeout=seconds + 60)[0].strip())
        after = host.status()
        alive = host.alive
    finally:
        server.stop()
        host.stop()
        bus.close()
    stats = server.stats
    return {
        "machine": machine(),
        "seconds": seconds,
        "rate_asked": rate,
        "sent_per_s": round(sent_per_s),
        "received": stats.received,
        "coalesced": stats.coalesced,
        "applied": stats.applied,
        "failed": stats.failed,
        "engine_alive": alive,
        "underruns_during_flood": after.underruns - before.underruns,
        "x_realtime": round(after.x_realtime, 2),
    }


def measure_features(seconds: float, features: int) -> dict:
    """Underruns while a 60 Hz fader moves one of `features` steered features."""
    from stream import make_sae

    from engine import steering
    from engine.audio import NullSink
    from engine.host import Host, HostConfig
    from engine.model import load_musicgen
    from engine.params import ParameterBus
    from osc.server import OscServer

    lm = load_musicgen("tiny", "cpu")
    sae = make_sae(lm, expansion=max(1, features // lm.hidden_size), k=8)
    out = {"machine": machine(), "seconds": seconds, "features": features, "d_sae": sae.cfg.d_sae, "fader_hz": 60}
    for variant, rebuild_every in (("incremental", steering.REBUILD_EVERY), ("rebuilt", 0)):
        steering.REBUILD_EVERY = rebuild_every
        bus = ParameterBus(knob_count=4, feature_count=sae.cfg.d_sae)
        with bus.batch():
            for f in range(features):
                bus.set_feature(f, 0.01 * ((f % 7) - 3))
        host = Host(lm, bus, NullSink(lm.sample_rate), sae, HostConfig())
        server = OscServer(bus, port=0)
        host.start()
        server.start()
        try:
            time.sleep(2.0)
            before = host.status()
            flood = flood_process(server.address[1], seconds, 60)
            flood.communicate(timeout=seconds + 60)
            after = host.status()
            out[variant] = {
                "underruns_during_fader": after.underruns - before.underruns,
                "fader_messages_applied": server.stats.applied,
                "steps": after.steps - before.steps,
                "step_ms_p50": round(after.step_ms_p50, 2),
                "step_ms_p95": round(after.step_ms_p95, 2),
                "x_realtime": round(after.x_realtime, 2),
                "engine_alive": host.alive,
            }
        finally:
            server.stop()
            host.stop()
            bus.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=int, default=11_000, help="messages a second to send")
    p.add_argument("--features", type=int, help="steer this many features and move one with a 60 Hz fader")
    p.add_argument("--send", nargs=3, metavar=("PORT", "SECONDS", "RATE"), help="only flood, print the rate sent")
    args = p.parse_args()
    if args.send:
        port, seconds, rate = args.send
        print(send(int(port), float(seconds), int(rate)))
        return
    if args.features:
        print(json.dumps(measure_features(args.seconds, args.features), indent=1))
        return
    print(json.dumps(measure(args.seconds, args.rate), indent=1))


if __name__ == "__main__":
    main()

"""Does the window keep the engine's pace? The same model and SAE played twice in one run, by
the command line's host and by the window (drawn offscreen, its meters, scope and status
running), each with a knob turned every 500 ms, on an idle machine and beside a second busy
process. Prints one JSON object: for each, x_realtime, underruns after the first audio, step
p95 and knob→sound p50/p95, and the window's speed as a share of the host's.

    python bench/window_pace.py [--model tiny] [--seconds 15] [--no-busy]
    python bench/window_pace.py --model demo_out/world --sae demo_out/sae --prompt melody   # after make demo

(Not bench/gui.py: a script there would stand in for the `gui` package it imports.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, one_line_errors
from stream import make_sae

from engine.audio import NullSink
from engine.host import Host, HostConfig
from engine.model import load_musicgen
from engine.params import ParameterBus
from sae.files import save_sae

KNOB_EVERY_S = 0.5


def figures(host: Host) -> dict:
    st = host.status()
    return {
        "played_s": round(st.position_s, 1),
        "x_realtime": round(st.x_realtime, 2),
        "underruns": st.underruns,
        "step_ms_p50": round(st.step_ms_p50, 2),
        "step_ms_p95": round(st.step_ms_p95, 2),
        "knob_to_sound_ms_p50": None if st.latency_ms_p50 is None else round(st.latency_ms_p50),
        "knob_to_sound_ms_p95": None if st.latency_ms_p95 is None else round(st.latency_ms_p95),
    }


def play_host(model: str, sae_dir: Path, seconds: float, prompt: str) -> dict:
    """The command line's host: `mgsteer play --no-audio` with a knob turning."""
    from sae.files import load_sae

    lm = load_musicgen(model)
    sae = load_sae(sae_dir)
    bus = ParameterBus(knob_count=8, feature_count=sae.cfg.d_sae, prompt=prompt)
    bus.configure_knob(0, features=[(0, 1.0)])
    host = Host(lm, bus, NullSink(lm.sample_rate), sae, HostConfig(meter_knobs=True))
    host.start()
    try:
        turns = 0
        while host.status().position_s < seconds and host.error is None:
            time.sleep(KNOB_EVERY_S)
            turns += 1
            bus.set_knob(0, (turns % 10) / 10)
        return figures(host)
    finally:
        host.stop()
        bus.close()


def play_window(model: str, sae_dir: Path, seconds: float, prompt: str) -> dict:
    """The window, as `mgsteer gui --no-audio` opens it, with the same knob turning."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PyQt6.QtCore import QSettings, QTimer
    from PyQt6.QtWidgets import QApplication

    from gui.session import SessionSpec
    from gui.window import MainWindow

    app = QApplication.instance() or QApplication(["mgsteer"])
    spec = SessionSpec(model=model, sae=str(sae_dir), no_audio=True, prompt=prompt)
    settings = QSettings(str(Path(tempfile.mkdtemp()) / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(spec, None, settings)
    window.show()
    result: dict = {}
    turns = [0]

    def tick() -> None:
        session = window.session
        if session is None:
            if not window.loading and window.errors:
                result["error"] = window.errors[-1]
                app.quit()
            return
        if not turns[0]:
            session.bus.configure_knob(0, features=[(0, 1.0)])
        turns[0] += 1
        session.bus.set_knob(0, (turns[0] % 10) / 10)
        if session.host.status().position_s >= seconds or session.host.error is not None:
            result.update(figures(session.host))
            app.quit()

    timer = QTimer(interval=int(KNOB_EVERY_S * 1000), timeout=tick)
    timer.start()
    window.load(spec)
    app.exec()
    timer.stop()
    window.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--seconds", type=float, default=15.0, help="audio each run plays")
    parser.add_argument("--sae", help="an SAE folder, labelled or not (not given: a random one, no catalog)")
    parser.add_argument("--prompt", default="simple melody", help="what to play (a world model: e.g. 'melody')")
    parser.add_argument("--busy", action=argparse.BooleanOptionalAction, default=True,
                        help="also run both beside a second process that keeps one core busy")  # fmt: skip
    args = parser.parse_args()
    if args.sae:
        sae_dir = Path(args.sae)
    else:
        sae_dir = Path(tempfile.mkdtemp()) / "sae"
        _save(load_musicgen(args.model), sae_dir)
    runs = {}
    for busy in (False, True) if args.busy else (False,):
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            host = play_host(args.model, sae_dir, args.seconds, args.prompt)
            window = play_window(args.model, sae_dir, args.seconds, args.prompt)
        finally:
            if spinner is not None:
                spinner.kill()
        speed = window.get("x_realtime", 0.0) / host["x_realtime"] if host["x_realtime"] else None
        runs["busy" if busy else "idle"] = {
            "host": host,
            "window": window,
            "window_speed_share": None if speed is None else round(speed, 2),
        }
    head = {"machine": machine(), "model": args.model, "sae": args.sae, "seconds": args.seconds}
    print(json.dumps({**head, **runs}, indent=1))


def _save(lm, folder: Path) -> None:
    loaded = make_sae(lm, expansion=8, k=32)
    save_sae(loaded.sae, folder, loaded.stats)


if __name__ == "__main__":
    one_line_errors(main)

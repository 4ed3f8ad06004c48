"""`mgsteer gui`: open the window, load in the background, optionally play a while and shoot.

`seconds` and `screenshot` make the window scriptable (smoke tests, documentation): it plays
until that much audio has played, writes a PNG of the real window and returns; a model that
fails to load returns the window's error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gui.session import SessionSpec
from gui.window import Attach, MainWindow


def _headless() -> bool:
    return sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run_app(
    spec: SessionSpec,
    attach: Attach | None = None,
    preset: str | None = None,
    seconds: float | None = None,
    screenshot: Path | None = None,
    steer: dict[int, float] | None = None,
) -> str | None:
    """Run the window until it is closed (or `seconds` have played); the error that ended
    a scripted run, if any."""
    if _headless() and "QT_QPA_PLATFORM" not in os.environ:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
        print("note: no display; the window is drawn offscreen")
    from PyQt6.QtCore import QTimer
    from PyQt6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(["mgsteer"])
    window = MainWindow(spec, attach)
    window.show()
    result: dict[str, str | None] = {"error": None}

    def steer_once(session) -> None:
        for feature, alpha in (steer or {}).items():
            window.steer_on_knob(feature, alpha)

    window.installed.connect(steer_once)
    if preset is not None:
        window.queue_preset(preset)
    window.load(spec)

    def watch() -> None:
        session = window.session
        if session is None and not window.loading and window.errors:
            result["error"] = window.errors[-1]
            app.quit()
        elif session is not None and not window.loading and session.host.status().position_s >= seconds:
            if screenshot is not None:
                window.grab().save(str(screenshot))
                print(f"wrote {screenshot}")
            app.quit()

    timer = QTimer(window, interval=100, timeout=watch)
    if seconds is not None:
        timer.start()
    app.exec()
    # The connections hold the closures and the closures hold the window: left connected, the
    # window outlives this call in a reference cycle, and its timer fires `watch` on a closed
    # window whenever a later event loop runs (a crash, not an error).
    timer.stop()
    timer.timeout.disconnect(watch)
    window.installed.disconnect(steer_once)
    window.close()
    return result["error"]

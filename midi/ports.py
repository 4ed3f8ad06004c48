"""MIDI input ports (mido + python-rtmidi): a named port or a virtual `mgsteer` port.

A controller unplugged mid-set must not stop the music: the port is watched and reopened
when it comes back. Without a usable MIDI backend the engine still runs; the caller gets one
clear line.
"""

from __future__ import annotations

import threading
import time

from engine.errors import MgsteerError
from midi.mapping import MidiController

APIS = {
    "alsa": "mido.backends.rtmidi/LINUX_ALSA",
    "jack": "mido.backends.rtmidi/UNIX_JACK",
    "auto": "mido.backends.rtmidi",
}


def midi_backend(api: str = "auto"):
    """A mido backend, checked to work; MgsteerError (one line) when none does."""
    if api not in APIS:
        raise MgsteerError(f"unknown MIDI API '{api}': use {', '.join(APIS)}")
    try:
        import mido

        backend = mido.Backend(APIS[api], load=True)
        backend.get_input_names()
    except ImportError as exc:
        raise MgsteerError(f"MIDI unavailable: {exc.name} is not installed (pip install mido python-rtmidi)") from exc
    except (SystemError, OSError, RuntimeError) as exc:
        raise MgsteerError(
            f"no MIDI backend on this machine ({str(exc).strip()}); the engine runs without MIDI"
        ) from exc
    return backend


class MidiInput:
    """Feeds a port's messages to `controller.handle`, reopening the port if it disappears."""

    def __init__(self, controller: MidiController, port: str | None = None, api: str = "auto", retry_s: float = 2.0):
        self.controller = controller
        self.backend = midi_backend(api)
        self.port_name, self.virtual = (port, False) if port else ("mgsteer", True)
        self.retry_s = retry_s
        self.opened = 0  # times a port was opened (reopens included)
        self.state = "closed"
        self._port = None
        self._running = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._running.set()
        self._open()
        self._thread = threading.Thread(target=self._watch, name="mgsteer-midi", daemon=True)
        self._thread.start()

    def _open(self) -> bool:
        try:
            self._port = self.backend.open_input(self.port_name, virtual=self.virtual, callback=self.controller.handle)
        except (OSError, SystemError, RuntimeError):
            self._port, self.state = None, "waiting"
            return False
        self.opened += 1
        self.state = "open"
        return True

    def _watch(self) -> None:
        while self._running.is_set():
            time.sleep(self.retry_s)
            if self.virtual:
                continue
            try:
                present = self.port_name in self.backend.get_input_names()
            except (OSError, SystemError, RuntimeError):
                present = False
            if self._port is not None and not present:
                self._close()
                self.state = "waiting"
            elif self._port is None and present:
                self._open()

    def _close(self) -> None:
        if self._port is not None:
            self._port.close()
            self._port = None

    def stop(self) -> None:
        self._running.clear()
        if self._thread is not None:
            self._thread.join(timeout=self.retry_s + 1)
        self._close()
        self.state = "closed"

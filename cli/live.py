"""What the live commands (`play`, `gui`) share: their flags and the controllers they start.

Why a module of its own: `cli.main` (play) and `cli.gui_command` (gui, play --gui) both use
these, and neither command module imports the other.
"""

from __future__ import annotations

import argparse

from cli import argtypes as types
from cli.common import backend_args, graph_args, sae_args, sampling_args
from engine.errors import MgsteerError
from engine.limits import LATENCY_PROFILES

PRESETS_HINT = "not given: $XDG_CONFIG_HOME/mgsteer/presets, else ~/.config/mgsteer/presets"


def live_args(p: argparse.ArgumentParser) -> None:
    """SAE, prompt, steering, transport, audio, preset, OSC and MIDI flags."""
    from engine.steering import HALVES

    sae_args(p, "SAE folder; needed for --steer and for knobs")
    p.add_argument("--prompt", default="simple melody", help="what to play, in words")
    p.add_argument(
        "--melody", metavar="FILE", help="a melody model follows this audio's melody (WAV; more with soundfile)"
    )
    p.add_argument(
        "--melody-input", nargs="?", const="", metavar="DEVICE",
        help="a melody model follows this sound input (none named: the system's default input)",
    )  # fmt: skip
    p.add_argument(
        "--melody-seconds", type=types.number(1.0, 30.0), default=10.0,
        help="seconds of the melody input the model follows (default 10)",
    )  # fmt: skip
    p.add_argument("--steer", action="append", default=[], metavar="FEATURE=ALPHA", help="repeatable; α in units of β")
    p.add_argument(
        "--halves", choices=HALVES,
        help="CFG halves the knobs steer: both, or cond (the conditional half alone: guidance scales the push); "
        "not given: the preset's, or both",
    )  # fmt: skip
    p.add_argument("--seconds", type=types.SECONDS, help="stop after this much audio has played (not given: Ctrl-C)")
    p.add_argument("--no-audio", action="store_true", help="no sound device: play into a real-time null clock")
    p.add_argument("--audio-device", help="output device name or index (not given: the system's)")
    p.add_argument(
        "--latency", choices=LATENCY_PROFILES,
        help="default: 300 ms queued, 8-frame chunks; low: 2-frame chunks, lookahead measured while playing "
        "(not given: the preset's, or default)",
    )  # fmt: skip
    p.add_argument(
        "--lookahead-ms", type=types.number(1.0, 10_000.0),
        help="audio kept queued ahead of playback (not given: the latency profile's: 300, or measured)",
    )  # fmt: skip
    p.add_argument("--preset", help="preset JSON (model, SAE, prompt, knobs); see presets/")
    p.add_argument("--osc", action="store_true", help="serve OSC control (docs/OSC.md)")
    p.add_argument(
        "--osc-host", help="127.0.0.1: this machine only; 0.0.0.0: the network (not given: the preset's, or 127.0.0.1)"
    )
    p.add_argument("--osc-port", type=types.PORT, help="UDP port (not given: the preset's, or 9000)")
    p.add_argument("--presets-dir", help=f"the only folder OSC may load presets from and save them to ({PRESETS_HINT})")
    p.add_argument(
        "--midi",
        nargs="?",
        const="",
        metavar="PORT",
        help="MIDI input: a port name, or none for a virtual 'mgsteer' port",
    )
    p.add_argument("--midi-api", default="auto", choices=("auto", "alsa", "jack"), help="MIDI backend")
    p.add_argument("--out", help="also record what plays to this WAV")
    p.add_argument(
        "--chunk", type=types.whole(1, 250), help="frames per EnCodec decode (not given: the latency profile's, 8 or 2)"
    )
    p.add_argument("--smoothing-ms", type=types.SMOOTHING_MS, default=50.0, help="glide time of steering changes")
    sampling_args(p)
    graph_args(p)
    backend_args(p)


def controller_settings(args: argparse.Namespace, preset) -> None:
    """OSC address, latency profile and CFG halves from the flags, else the preset's, else
    127.0.0.1:9000, the default profile and both halves."""
    args.latency = args.latency or (preset.latency if preset is not None else "default")
    args.halves = args.halves or (preset.halves if preset is not None else "both")
    osc = preset.osc if preset is not None else {}
    args.osc_host = args.osc_host or osc.get("host", "127.0.0.1")
    args.osc_port = args.osc_port if args.osc_port is not None else osc.get("port", 9000)


def start_osc(args, bus, host, lm, sae):
    from engine.presets import PresetFolder, user_presets_dir
    from osc.server import OscServer, preset_handler

    def status() -> dict:
        st = host.status()
        return {
            "position_s": round(st.position_s, 2),
            "underruns": st.underruns,
            "x_realtime": round(st.x_realtime, 3),
            "nonfinite_steps": st.nonfinite_steps,
        } | ({"recording": st.recording} if st.recording else {})

    folder = PresetFolder(args.presets_dir or user_presets_dir())
    presets = preset_handler(bus, lm.spec, str(sae.path) if sae else None, sae.cfg.d_sae if sae else None, folder)
    server = OscServer(bus, args.osc_host, args.osc_port, status=status, presets=presets)
    server.start()
    print(
        f"OSC on {server.address[0]}:{server.address[1]} (address space: docs/OSC.md); "
        f"presets by name in {folder.folder}"
    )
    return server


def start_midi(args, bus, preset):
    """MIDI is optional: without a backend the engine plays on, after one line saying so."""
    from midi.mapping import MidiController, parse_bindings
    from midi.ports import MidiInput

    settings = preset.midi if preset is not None else {}
    bindings = parse_bindings(settings.get("map", []), len(bus.snapshot().knobs))
    port = args.midi or settings.get("port") or None
    try:
        controller = MidiController(bus, bindings, follow_note=settings.get("follow_note"))
        midi = MidiInput(controller, port=port if port != "mgsteer" else None, api=args.midi_api)
    except MgsteerError as exc:
        print(f"note: {exc}")
        return None
    midi.start()
    print(
        f"MIDI {'virtual port' if midi.virtual else 'port'} '{midi.port_name}': {midi.state}, {len(bindings)} bindings"
    )
    return midi


def device_arg(text: str | None) -> str | int | None:
    return int(text) if text is not None and text.isascii() and text.isdigit() else text  # "²" is a name

"""`mgsteer gui` (and `mgsteer play --gui`): the desktop window, with OSC and MIDI beside it.

The window (gui/) only writes to the parameter bus; this module, above it, decides which
controllers run alongside and hands the window a function that attaches them to each
session it opens (a new model or SAE gets fresh ones).
"""

from __future__ import annotations

import argparse

from cli import argtypes as types
from cli.common import DEFAULT_MODEL, model_args, require_features, sampling_config
from cli.live import controller_settings, device_arg, live_args, start_midi, start_osc
from engine.errors import MgsteerError
from engine.limits import MAX_KNOBS
from engine.outputs import output_file


def add_gui_command(sub) -> None:
    g = sub.add_parser("gui", help="the desktop knob panel: play and steer with knobs, MIDI and OSC")
    model_args(g, default=None, default_text="the preset's, else tiny")
    live_args(g)
    g.add_argument(
        "--knobs", type=types.whole(1, MAX_KNOBS), help="knobs in the bank (not given: the preset's count, at least 8)"
    )
    g.add_argument("--screenshot", help="with --seconds: write a PNG of the window before exiting")
    g.set_defaults(func=run_gui)


def run_gui(args: argparse.Namespace) -> None:
    """Shared by `gui` and `play --gui`; flags that only the console player has are refused."""
    if getattr(args, "meters", None):
        raise MgsteerError("--meters is not used with the window: it meters the knobs' features itself")
    from engine.presets import load_preset
    from engine.steering import parse_steer

    try:
        from gui.app import run_app
        from gui.session import Backend, SessionSpec
    except ImportError as exc:
        raise MgsteerError(f"the window needs PyQt6 ({exc}): pip install 'musicgen-steer[gui]'") from exc

    shot = output_file(args.screenshot, (".png",)) if args.screenshot else None
    if shot is not None and args.seconds is None:
        raise MgsteerError("--screenshot needs --seconds: the picture is taken after that much has played")
    record = output_file(args.out, (".wav",)) if args.out else None
    steers = {s.feature: s.alpha for s in (parse_steer(text) for text in args.steer)}
    preset = load_preset(args.preset) if args.preset else None
    given = args.model not in (None, DEFAULT_MODEL)
    model = args.model if given else preset.model if preset is not None else args.model or "tiny"
    sae = args.sae or (preset.sae if preset is not None else None)
    concepts = tuple(args.concept) or (preset.concepts if preset is not None else ())
    require_features(steers, sae, concepts)
    controller_settings(args, preset)
    spec = SessionSpec(
        model=model,
        sae=sae,
        concepts=concepts,
        device=args.device,
        dtype=args.dtype,
        knobs=getattr(args, "knobs", None) or min(MAX_KNOBS, max(8, len(preset.knobs) if preset else 0)),
        prompt=args.prompt,
        sampling=sampling_config(args),
        no_audio=args.no_audio,
        audio_device=device_arg(args.audio_device),
        latency=args.latency,
        lookahead_ms=args.lookahead_ms,
        chunk=args.chunk,
        smoothing_ms=args.smoothing_ms,
        graph=args.graph,
        backend=Backend(args.backend, args.onnx_dir, args.precision),
        record=str(record) if record else None,
        record_seconds=args.seconds,
        melody=args.melody,
        melody_input=device_arg(args.melody_input),
        melody_seconds=args.melody_seconds,
        halves=args.halves,
    )
    error = run_app(spec, _attach(args, preset), args.preset, args.seconds, shot, steers)
    if error is not None:
        raise MgsteerError(error)


def _attach(args: argparse.Namespace, preset=None):
    """The controllers to start beside each session the window opens (MIDI with the start
    preset's CC bindings)."""
    from gui.session import Controllers

    def attach(session) -> Controllers:
        osc = start_osc(args, session.bus, session.host, session.lm, session.sae) if args.osc else None
        midi = start_midi(args, session.bus, preset) if args.midi is not None else None

        def describe() -> str:
            where = f"OSC {osc.address[0]}:{osc.address[1]}" if osc is not None else "OSC off"
            return where + (f" · MIDI '{midi.port_name}' {midi.state}" if midi is not None else " · MIDI off")

        def close() -> None:
            if osc is not None:
                osc.stop()
            if midi is not None:
                midi.stop()

        return Controllers(midi=midi.controller if midi is not None else None, describe=describe, close=close)

    return attach

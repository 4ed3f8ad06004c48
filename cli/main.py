"""`mgsteer`: the one command-line entry point.

Every bad input ends as one line `mgsteer: error: …` on stderr and exit status 2; heavy
imports happen inside the subcommands so `mgsteer --help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
import time

from cli import argtypes as types
from cli.common import (
    DEFAULT_MODEL,
    backend_args,
    feature_list,
    graph_args,
    layer_list,
    load_steering_sae,
    model_args,
    open_backend,
    parse_filter,
    progress_bars,
    require_features,
    sae_args,
    sampling_args,
    sampling_config,
    steer_mode_args,
    stop_on_signals,
)
from cli.concept_command import add_concept_command
from cli.gui_command import add_gui_command, run_gui
from cli.import_command import add_import_command
from cli.live import controller_settings, device_arg, live_args, start_midi, start_osc
from cli.onnx_command import add_export_command
from cli.sae_commands import add_commands
from cli.world_command import add_world_command
from engine import limits
from engine.errors import MgsteerError
from engine.inputs import os_reason
from engine.outputs import output_dir, output_file


def build_parser() -> argparse.ArgumentParser:
    parser = types.OneLineParser(prog="mgsteer", description="Steer MusicGen with sparse-autoencoder features.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    r = sub.add_parser("render", help="render one steered clip to a WAV file")
    model_args(r)
    sae_args(r, "SAE folder (cfg.json + sae_weights.safetensors + feature_stats.safetensors)")
    r.add_argument("--prompt", default="simple melody", help="what to play, in words")
    r.add_argument(
        "--melody", metavar="FILE", help="a melody model follows this audio's melody (WAV; more with soundfile)"
    )
    r.add_argument(
        "--steer",
        action="append",
        default=[],
        metavar="FEATURE=ALPHA",
        help="repeatable; α in units of β, or a curve FEATURE=T:ALPHA,… (seconds:α, linear), e.g. 12=0:0,4:2,8:0",
    )
    steer_mode_args(r)
    r.add_argument("--seconds", type=types.SECONDS, default=5.0, help="audio to render")
    r.add_argument("--out", default="out.wav", help="WAV file to write")
    sampling_args(r)
    graph_args(r)
    backend_args(r)
    r.set_defaults(func=cmd_render)

    p = sub.add_parser("play", help="play endlessly, steerable live (the resident host)")
    model_args(p)
    live_args(p)
    p.add_argument("--meters", help="comma-separated feature ids to meter each step")
    p.add_argument("--gui", action="store_true", help="play in the desktop window (as mgsteer gui)")
    p.add_argument("--screenshot", help="with --gui and --seconds: write a PNG of the window before exiting")
    p.set_defaults(func=cmd_play)
    add_gui_command(sub)
    add_export_command(sub)
    add_concept_command(sub)
    add_world_command(sub)
    add_import_command(sub)

    h = sub.add_parser("harvest", help="record residual activations per frame into a sharded store")
    model_args(h)
    src = h.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio", help="folder of wav/flac/mp3/ogg: teacher-forced, as in the paper")
    src.add_argument("--prompts", help="text file, one prompt per line: activations while generating")
    h.add_argument("--layers", required=True, help="comma-separated decoder layers, e.g. 2,6,12")
    h.add_argument("--out", required=True, help="store folder (created, or resumed if it exists with the same inputs)")
    h.add_argument("--captions", help="CSV file,caption for conditioned teacher forcing (not given: unconditional)")
    h.add_argument("--clip-seconds", type=types.CLIP_SECONDS, default=10.0, help="audio is cut into clips this long")
    h.add_argument("--seconds", type=types.CLIP_SECONDS, default=10.0, help="generated seconds per prompt")
    h.add_argument("--store-dtype", default="float16", choices=("float16", "bfloat16", "float32"), help="row dtype")
    h.add_argument("--shard", help="i/n: this worker's share of the clips (not given: torchrun's rank/world)")
    h.add_argument("--shard-rows", type=types.whole(1, 2**24), default=65536, help="rows per shard file")
    h.add_argument("--seed", type=types.SEED, default=0, help="sampling seed of generation harvests")
    h.add_argument("--batch-clips", type=types.whole(1, 1024), default=8,
                   help="clips per pass: audio clips teacher-forced, or prompts played together")  # fmt: skip
    h.set_defaults(func=cmd_harvest)

    t = sub.add_parser("train", help="train a TopK SAE on a store (torchrun-able)")
    t.add_argument("--acts", required=True, help="activation store from mgsteer harvest")
    t.add_argument("--out", required=True, help="SAE folder (SAELens layout) and checkpoints")
    t.add_argument("--layer", type=types.whole(0, 1000), help="needed when the store has several layers")
    t.add_argument("--k", type=types.whole(1, 65_536), default=32, help="active features per row")
    t.add_argument("--expansion", type=types.whole(1, 1024), default=4, help="d_sae = expansion × d_in")
    t.add_argument("--architecture", default="topk", choices=("topk", "batchtopk"), help="sparsity rule")
    t.add_argument("--steps", type=types.COUNT, default=10_000, help="training steps")
    t.add_argument("--batch-size", type=types.whole(1, 2**20), default=4096, help="rows per step")
    t.add_argument("--lr", type=types.number(0.0, 1.0, above=True), help="not given: 6.4e-3 / sqrt(d_sae / 16384)")
    t.add_argument("--warmup-steps", type=types.whole(0, 10**9), default=0, help="linear learning-rate warm-up")
    t.add_argument("--dead-steps", type=types.COUNT, default=200, help="steps without firing that make a latent dead")
    t.add_argument("--b-dec-init", default="geometric_median", choices=("geometric_median", "mean"), help="b_dec start")
    t.add_argument("--checkpoint-every", type=types.COUNT, default=1000, help="steps between checkpoints")
    t.add_argument("--log-every", type=types.COUNT, default=50, help="steps between metrics lines")
    t.add_argument("--filter", default="0.01,0.25", help="keep features firing on lo..hi of clips (0 ≤ lo ≤ hi ≤ 1)")
    t.add_argument("--seed", type=types.SEED, default=0, help="initialisation and data-order seed")
    t.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, mps")
    run = t.add_mutually_exclusive_group()
    run.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    run.add_argument("--overwrite", action="store_true", help="clear an earlier SAE or run in --out and start afresh")
    t.set_defaults(func=cmd_train)

    i = sub.add_parser("info", help="print facts about a model and an SAE")
    model_args(i)
    i.add_argument("--sae", help="SAE folder to check against the model")
    i.set_defaults(func=cmd_info)

    d = sub.add_parser("demo", help="offline demo: a planted music world, an SAE, a plain and a steered WAV")
    d.add_argument("--out", default="demo_out", help="folder for everything the demo writes")
    d.add_argument("--layer", type=types.whole(0, 1000), default=2, help="decoder layer of the SAE")
    d.add_argument("--seconds", type=types.number(0.0, 30.0, above=True), default=5.0, help="seconds per WAV")
    d.add_argument("--seed", type=types.SEED, default=0, help="sampling seed")
    d.set_defaults(func=cmd_demo)

    add_commands(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("musicgen-steer")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help, --version, or a bad argument (one line, see OneLineParser)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        existing_sae(args)
        args.func(args)
    except MgsteerError as exc:
        print(f"mgsteer: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system said no where no check could foresee it: a full disk, mostly
        where = f" ('{exc.filename}')" if exc.filename else ""
        print(f"mgsteer: error: {os_reason(exc)}{where}"[:400], file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mgsteer: interrupted", file=sys.stderr)
        return 130
    return 0


def existing_sae(args: argparse.Namespace) -> None:
    """A `--sae` folder that is not there is said before any model loads (a hub lookup of the
    model would otherwise answer first)."""
    from pathlib import Path

    sae = getattr(args, "sae", None)
    if sae and not Path(sae).expanduser().is_dir():
        raise MgsteerError(f"SAE folder '{sae}' does not exist")


def cmd_render(args: argparse.Namespace) -> None:
    from engine.melody_input import open_melody
    from engine.model import load_musicgen
    from engine.render import frames_for, render, write_wav
    from engine.steering import SteeringSpec, parse_steer

    steers = tuple(parse_steer(s, curves=True) for s in args.steer)
    require_features(steers, args.sae, args.concept)
    if args.backend == "onnx" and args.mode == "clamp":
        raise MgsteerError("clamp-mode steering runs on the torch backend only: use --backend torch")
    if args.mode == "clamp":
        args.backend = "torch"  # auto's choice: the only runtime that clamps
    prompt = limits.prompt_text(args.prompt, "--prompt")
    out_path = output_file(args.out, (".wav",))
    sampling = sampling_config(args)
    lm = load_musicgen(args.model, args.device, args.dtype)
    frames_for(lm, args.seconds)
    sae = load_steering_sae(args, lm.device)
    spec = SteeringSpec(steers=steers, mode=args.mode, halves=args.halves) if sae else None
    melody = open_melody(lm, args.melody)
    backend = open_backend(args, lm, sae)
    started = time.perf_counter()
    out = render(
        lm, prompt, args.seconds, sampling, sae, spec, progress=progress_bars(), graph=args.graph, backend=backend,
        melody=melody.chroma if melody is not None else None,
    )  # fmt: skip
    took = time.perf_counter() - started
    path = write_wav(out_path, out.audio, out.sample_rate)
    print(
        f"rendered {out.seconds:.2f} s ({out.codes.shape[-1]} frames) of '{prompt}' with {lm.spec} "
        f"on {lm.device.type} in {took:.1f} s (seed {args.seed})" + (f", following {args.melody}" if melody else "")
    )
    if sae is not None:
        print(describe_steering(sae, spec))
    if out.graph_error:
        print(f"note: {out.graph_error}")
    if out.nonfinite_steps:
        print(f"note: {out.nonfinite_steps} steps were not finite under this steering and were run unsteered")
    print(f"wrote {path} ({out.sample_rate} Hz, {'stereo' if out.audio.ndim == 2 else 'mono'}, 16-bit)")


def describe_melody(melody, args: argparse.Namespace) -> str:
    if not melody.live:
        return f"melody: {args.melody} ({len(melody.chroma)} chroma frames)"
    return (
        f"melody: the last {args.melody_seconds:g} s of input '{melody.device_name}', taken at each re-prime "
        "(and on OSC /mgsteer/melody/follow)"
    )


def describe_steering(sae, spec) -> str:
    if not spec.steers:
        return f"steering: none (SAE at layer {sae.cfg.hook_layer} loaded)"
    beta = sae.require_stats().max_activation
    parts = ", ".join(f"feature {s.feature} α={_alpha_text(s)} β={beta[s.feature].item():.3g}" for s in spec.steers)
    return f"steering: {spec.mode} at layer {sae.cfg.hook_layer} ({spec.halves} CFG halves): {parts}"


def _alpha_text(steer) -> str:
    """α, or a curve as its breakpoints: "0 s 0 → 4 s 2 → 8 s 0"."""
    return " → ".join(f"{t:g} s {a:g}" for t, a in steer.curve) if steer.curve else f"{steer.alpha:g}"


def cmd_play(args: argparse.Namespace) -> None:
    from engine.audio import DeviceSink, NullSink, WavRecorder
    from engine.backends import runtime_name
    from engine.host import Host, HostConfig
    from engine.melody_input import open_melody
    from engine.model import load_musicgen
    from engine.params import ParameterBus
    from engine.presets import apply_preset, load_preset
    from engine.steering import parse_steer

    if args.gui:
        run_gui(args)
        return
    if args.screenshot:
        raise MgsteerError("--screenshot needs --gui: it is a picture of the window")
    preset = load_preset(args.preset) if args.preset else None
    if preset is not None:
        args.model = args.model if args.model != DEFAULT_MODEL else preset.model
        args.sae = args.sae or preset.sae
        args.concept = args.concept or list(preset.concepts)
    controller_settings(args, preset)
    steers = [parse_steer(s) for s in args.steer]
    if (steers or args.meters) and not (args.sae or args.concept):
        raise MgsteerError("--steer and --meters need --sae DIR (or --concept DIR): the features are that SAE's")
    limits.prompt_text(args.prompt, "--prompt")
    if args.out:
        output_file(args.out, (".wav",))
    meters = feature_list(args.meters) if args.meters else None
    sampling = sampling_config(args)
    lm = load_musicgen(args.model, args.device, args.dtype)
    sae = load_steering_sae(args, lm.device)
    melody = open_melody(lm, args.melody, device_arg(args.melody_input), args.melody_seconds)
    config = HostConfig.for_latency(
        args.latency,
        lookahead_ms=args.lookahead_ms,
        chunk=args.chunk,
        sampling=sampling,
        meters=meters,
        graph=args.graph,
        backend=open_backend(args, lm, sae),
        melody=melody,
        halves=args.halves,
    )
    bus = ParameterBus(
        knob_count=max(8, len(preset.knobs)) if preset is not None else 8,
        prompt=args.prompt,
        smoothing_ms=args.smoothing_ms,
        feature_count=sae.cfg.d_sae if sae else None,
    )
    if preset is not None:
        load_preset(args.preset, sae.cfg.d_sae if sae else None)  # feature ids checked against the SAE
        apply_preset(preset, bus)
        print(f"preset '{preset.name}' ({args.preset})")
    for steer in steers:
        bus.set_feature(steer.feature, steer.alpha)
    channels = lm.audio_channels
    sink = (
        NullSink(lm.sample_rate, channels=channels)
        if args.no_audio
        else DeviceSink(lm.sample_rate, device_arg(args.audio_device), channels=channels)
    )
    recorder = WavRecorder(args.out, lm.sample_rate, max_seconds=args.seconds, channels=channels) if args.out else None
    host = Host(lm, bus, sink, sae, config, recorder)
    osc = start_osc(args, bus, host, lm, sae) if args.osc else None
    midi = start_midi(args, bus, preset) if args.midi is not None else None
    latest: dict = {}
    bus.subscribe(lambda feedback: feedback.meters and latest.update(feedback.meters))
    where = "null clock (no audio)" if args.no_audio else f"'{sink.device_name}' at {sink.sample_rate} Hz"
    runtime = f"{lm.device.type}, {runtime_name(lm, config.backend)}"
    print(f"playing '{bus.snapshot().prompt}' with {lm.spec} on {runtime} into {where}; Ctrl-C stops")
    if melody is not None:
        print(describe_melody(melody, args))
    host.start()
    next_line = time.perf_counter() + 1.0
    graph_noted = False
    restore_signals = stop_on_signals()
    try:
        while args.seconds is None or host.status().position_s < args.seconds:
            time.sleep(0.02)
            if host.error is not None:
                raise MgsteerError(f"generation stopped: {host.error}")
            if time.perf_counter() >= next_line:
                next_line += 1.0
                if host.graph_error and not graph_noted:
                    print(f"note: {host.graph_error}")
                    graph_noted = True
                meters = " ".join(f"{f}:{v:.2f}" for f, v in sorted(latest.items()))
                print(host.status().line() + (f" | meters {meters}" if meters else ""), flush=True)
    except KeyboardInterrupt as exc:
        print(f"stopping ({exc})" if str(exc) else "stopping")
    finally:
        restore_signals()
        if osc is not None:
            osc.stop()
        if midi is not None:
            midi.stop()
        host.stop()
        bus.close()
    if recorder is not None and recorder.error:
        print(f"note: {recorder.error}")
    elif recorder is not None:
        print(f"recorded {recorder.written / lm.sample_rate:.1f} s to {recorder.path}")


def cmd_harvest(args: argparse.Namespace) -> None:
    from engine.model import load_musicgen
    from engine.tokenloop import SamplingConfig
    from sae.harvest import (
        assigned,
        audio_clips,
        audio_inputs,
        check_clip_length,
        harvest_to_store,
        parse_shard,
        prompt_clips,
        prompt_inputs,
        read_captions,
    )  # fmt: skip

    layers = layer_list(args.layers)
    worker, workers = parse_shard(args.shard)
    output_dir(args.out)
    if args.audio:
        captions = read_captions(args.captions) if args.captions else None
        clips = audio_clips(args.audio, args.clip_seconds, captions)
        inputs = audio_inputs(args.audio, args.clip_seconds, captions)
    else:
        clips = prompt_clips(args.prompts, args.seconds)
        inputs = prompt_inputs(clips, args.seconds, args.seed)
    lm = load_musicgen(args.model, args.device, args.dtype)
    check_clip_length(lm, args.clip_seconds if args.audio else args.seconds, generated=not args.audio)
    source = "audio" if args.audio else "generation"
    writer = harvest_to_store(
        lm, clips, layers, args.out, source, worker, workers, args.store_dtype, args.shard_rows,
        SamplingConfig(seed=args.seed), progress=progress_bars(), inputs=inputs, batch_clips=args.batch_clips,
    )  # fmt: skip
    mine = len(assigned(clips, worker, workers))
    print(f"harvested {len(writer.done)}/{mine} clips (worker {worker}/{workers}) at layers {layers} into {args.out}")
    if writer.frames:
        print(
            f"{writer.frames} frames in {writer.seconds:.1f} s: {writer.frames / writer.seconds:.0f} frames/s "
            f"({100 * writer.write_s / writer.seconds:.0f} % of the time writing the store)"
        )


def cmd_train(args: argparse.Namespace) -> None:
    import json

    from sae.store import ActivationStore
    from sae.train import TrainConfig, Trainer, filter_report

    lo, hi = parse_filter(args.filter)
    output_dir(args.out)
    cfg = TrainConfig(
        layer=args.layer, k=args.k, expansion=args.expansion, architecture=args.architecture, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps, dead_steps=args.dead_steps,
        b_dec_init=args.b_dec_init, checkpoint_every=args.checkpoint_every, log_every=args.log_every,
        seed=args.seed, device=args.device,
    )  # fmt: skip
    trainer = Trainer(ActivationStore(args.acts), args.out, cfg)
    last = trainer.run(resume=args.resume, progress=progress_bars(), overwrite=args.overwrite)
    if trainer.rank != 0:
        return
    from sae.files import load_sae

    report = filter_report(load_sae(args.out).require_stats(), lo, hi)
    (trainer.out / "filter.json").write_text(json.dumps(report, indent=1))
    total, dead = report["total"], report["dead"]
    print(
        f"trained {trainer.sae_cfg.d_sae} features (k={cfg.k}) at layer {trainer.layer}: FVU {last.get('fvu')}, "
        f"L0 {last.get('l0')}; {total - dead}/{total} fire on the store, {dead} never do"
        + (f"; codebook CE recovered {last['ce_recovered']:.3f}" if "ce_recovered" in last else "")
    )
    print(
        f"filter: firing on {lo:g}–{hi:g} of clips keeps {len(report['kept'])}/{total} features "
        f"({report['generic']} fire on more than {hi:g} of clips, {report['rare']} on fewer than {lo:g}, "
        f"{dead} on none); `label` labels those kept, or every feature that fires if none is; "
        "other thresholds in filter.json"
    )
    print(f"wrote {trainer.out}/cfg.json, sae_weights.safetensors, feature_stats.safetensors, metrics.jsonl")


def cmd_info(args: argparse.Namespace) -> None:
    from engine.model import load_musicgen
    from sae.files import check_sae_fits, load_sae

    lm = load_musicgen(args.model, args.device, args.dtype)
    print(f"model      {lm.spec} ({type(lm.model).__name__}, {lm.parameter_count() / 1e6:.1f} M parameters)")
    print(f"family     {lm.family}")
    print(f"device     {lm.device} {str(lm.dtype).removeprefix('torch.')}")
    print(
        f"decoder    {lm.num_layers} layers, hidden {lm.hidden_size}, {lm.num_codebooks} codebooks × {lm.codebook_size}"
    )
    frames = lm.max_positions - lm.delay_steps
    channels = "stereo (codebooks 0, 2, 4, … left)" if lm.audio_channels == 2 else "mono"
    print(f"audio      {lm.sample_rate} Hz, {lm.frame_rate} frames/s, {channels}")
    if lm.melody:
        chroma = int(lm.model.config.chroma_length)
        print(f"condition  prepended: {chroma} chroma frames of the melody (--melody), then the prompt's tokens")
    print(f"one pass   ≤ {frames} frames ({frames / lm.frame_rate:g} s)")
    if not args.sae:
        return
    sae = load_sae(args.sae, lm.device)
    cfg = sae.cfg
    print(f"sae        {sae.path}: {cfg.architecture}, d_in {cfg.d_in}, d_sae {cfg.d_sae}, k {cfg.k}")
    print(f"hook       {cfg.hook_name} (layer {cfg.hook_layer}), trained on {cfg.model_name}")
    if sae.stats is None:
        print("stats      none (steering needs feature_stats.safetensors)")
    else:
        rate = sae.stats.firing_rate
        alive = int((rate > 0).sum())
        print(f"stats      {alive}/{cfg.d_sae} features fire; mean firing rate {rate.mean().item():.4f}")
    catalog_path = sae.path / "features.json"
    if catalog_path.is_file():
        from sae.catalog import load_catalog

        catalog = load_catalog(sae.path)
        labelers = ", ".join(catalog.get("labelers", []))
        print(f"labels     {len(catalog['features'])} features labeled ({labelers}); mgsteer browse --sae {sae.path}")
    else:
        print(f"labels     none yet (mgsteer label --sae {sae.path} --acts DIR)")
    check_sae_fits(sae, lm)
    print("fits       yes")


def cmd_demo(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from cli.demo import DemoConfig, run_demo

    cfg = DemoConfig(seconds=args.seconds, seed=args.seed)
    cfg = replace(cfg, sae=replace(cfg.sae, layer=args.layer, seed=args.seed))
    run_demo(output_dir(args.out), cfg, progress=progress_bars())


if __name__ == "__main__":
    sys.exit(main())

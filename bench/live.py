"""A live set, measured: the engine plays for `--seconds` into a null sink (a sound card's
clock without sound) while a knob turns every `--knob-every-ms`, steering an SAE feature, with
4 meters on. Prints one JSON object: underruns, speed (`x_realtime`: audio seconds generated
per second of compute; real time needs ≥ 1), step ms and knob→sound latency p50/p95, time to
first audio, re-primes, and memory early and late (process RSS; GPU memory on CUDA); and
what played: each second's loudness and, on a world model, the grammar's log-likelihood per
token for each 10 s (endless play must stay music, not fall silent or into noise).

Underruns and speed depend on how busy the machine is, so they are this benchmark's figures,
not assertions in the tests (tests/test_host.py checks that play goes on).

    python bench/live.py [--model tiny|random-small|random-large] [--device auto] [--dtype auto]
                         [--seconds 120] [--knob-every-ms 500] [--no-graph]
                         [--lookahead-ms 300] [--chunk 8] [--latency low]
    python bench/live.py --model demo_out/world --prompt melody --no-steer --seconds 120
    python bench/live.py --model tiny-melody --melody-input-file tune.wav   # a WAV as a live melody input
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from common import machine, one_line_errors
from stream import make_sae

from engine.audio import NullSink, WavRecorder
from engine.host import Host, HostConfig
from engine.levels import rms_dbfs
from engine.limits import LATENCY_PROFILES
from engine.melody_input import LiveMelody
from engine.model import load_musicgen
from engine.params import ParameterBus
from engine.synth_codec import SynthCodec
from engine.wavfile import read_audio
from sae.world.grammar import ExactScorer


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def memory_mb(device: torch.device) -> dict:
    out = {"rss_mb": round(rss_mb(), 1)}
    if device.type == "cuda":
        out["gpu_allocated_mb"] = round(torch.cuda.memory_allocated(device) / 2**20, 1)
    return out


class FileInput:
    """A sound input that plays a WAV in a loop, in real time, on its own thread: what a
    microphone's callback would deliver (sounddevice.InputStream's signature)."""

    BLOCK = 1024

    def __init__(self, path: str, device, samplerate, channels, dtype, callback) -> None:
        audio, rate = read_audio(path)
        if rate != samplerate:
            raise SystemExit(f"{path} is at {rate} Hz; give a {samplerate} Hz WAV")
        self.audio = np.ascontiguousarray(audio[:, :channels] if audio.shape[1] >= channels else audio[:, :1])
        self.callback, self.rate = callback, samplerate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        at, start = 0, time.perf_counter()
        while not self._stop.is_set():
            block = np.take(self.audio, range(at, at + self.BLOCK), axis=0, mode="wrap")
            self.callback(block, len(block), None, None)
            at += self.BLOCK
            time.sleep(max(0.0, start + at / self.rate - time.perf_counter()))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._thread.join(timeout=2)


def live_melody_from(path: str) -> LiveMelody:
    _, rate = read_audio(path, seconds=0.01)
    return LiveMelody(seconds=10.0, stream_factory=lambda **kw: FileInput(path, **kw), sample_rate=rate, channels=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--seconds", type=float, default=120.0, help="wall seconds to play")
    p.add_argument("--knob-every-ms", type=float, default=500.0)
    p.add_argument("--graph", action=argparse.BooleanOptionalAction, default=True, help="CUDA graph replay")
    p.add_argument("--latency", default="default", choices=LATENCY_PROFILES, help="engine.host latency profile")
    p.add_argument("--lookahead-ms", type=float, help="audio kept queued (not given: the profile's)")
    p.add_argument("--chunk", type=int, help="frames decoded at a time (not given: the profile's)")
    p.add_argument("--prompt", default="simple melody", help="what to play (a world model: e.g. 'melody')")
    p.add_argument("--no-steer", action="store_true", help="no SAE, no knob: endless play alone")
    p.add_argument(
        "--melody-input-file", help="a melody model follows this WAV, fed in real time as a live input (looped)"
    )
    args = p.parse_args()
    lm = load_musicgen(args.model, args.device, args.dtype)
    sae = None if args.no_steer else make_sae(lm, expansion=8, k=32)
    bus = ParameterBus(
        knob_count=1, feature_count=sae.cfg.d_sae if sae else None, smoothing_ms=50.0, prompt=args.prompt
    )
    if sae is not None:
        bus.configure_knob(0, features=[(0, 1.0)])
    melody = live_melody_from(args.melody_input_file) if args.melody_input_file else None
    config = HostConfig.for_latency(args.latency, lookahead_ms=args.lookahead_ms, chunk=args.chunk,
                                    meters=None if sae is None else [0, 1, 2, 3], graph=args.graph,
                                    melody=melody)  # fmt: skip
    recording = Path(tempfile.mkdtemp()) / "live.wav"
    host = Host(lm, bus, NullSink(lm.sample_rate), sae, config, WavRecorder(recording, lm.sample_rate))
    codes: list[torch.Tensor] = []
    host.on_frames = lambda frames: codes.append(frames[0].cpu())
    started = time.perf_counter()
    host.start()
    try:
        while host.status().generated_s == 0 and host.error is None:
            time.sleep(0.005)
        first_audio_ms = 1000 * (time.perf_counter() - started)
        memory, turns, period = {}, 0, args.knob_every_ms / 1000
        while (elapsed := time.perf_counter() - started) < args.seconds and host.error is None:
            time.sleep(period)
            turns += 1
            if sae is not None:
                bus.set_knob(0, (turns % 10) / 10)
            if "early" not in memory and elapsed >= min(25.0, args.seconds / 4):
                memory["early"] = memory_mb(lm.device)
        memory["late"] = memory_mb(lm.device)
        status = host.status()
    finally:
        host.stop()
    print(json.dumps({
        "model": args.model,
        "device": str(lm.device),
        "machine": machine(lm.device),
        "dtype": str(lm.dtype).removeprefix("torch."),
        "graph": args.graph,
        "latency": args.latency,
        "lookahead_ms": round(host.lookahead_target_ms(), 1),
        "chunk_frames": host.chunk_frames,
        "holdback_frames": host.config.chunk.holdback,
        "seconds": args.seconds,
        "knob_turns": turns,
        "error": None if host.error is None else str(host.error),
        "played_s": round(status.position_s, 1),
        "underruns": status.underruns,
        "x_realtime": round(status.x_realtime, 2),
        "step_ms_p50": round(status.step_ms_p50, 2),
        "step_ms_p95": round(status.step_ms_p95, 2),
        "knob_to_sound_ms_p50": None if status.latency_ms_p50 is None else round(status.latency_ms_p50),
        "knob_to_sound_ms_p95": None if status.latency_ms_p95 is None else round(status.latency_ms_p95),
        "first_audio_ms": round(first_audio_ms),
        "reprimes": status.reprimes,
        "melody_input": args.melody_input_file,
        "context_s": lm.context_s,
        "memory": memory,
        **music_figures(lm, recording, torch.cat(codes, dim=-1) if codes else None),
    }, indent=1))  # fmt: skip


def music_figures(lm, recording: Path, codes: torch.Tensor | None) -> dict:
    """What played, second by second: its loudness (RMS, dBFS: is it ever silent?) and, for a
    world model, the grammar's log-likelihood per token (is it still music?), first 10 s
    against each later 10 s."""
    audio, rate = read_audio(recording)
    seconds = len(audio) // rate
    rms = [rms_dbfs(audio[i * rate : (i + 1) * rate, 0]) for i in range(seconds)]
    out: dict = {
        "rms_dbfs_per_s_min": round(float(min(rms)), 1) if rms else None,
        "seconds_below_minus_40_dbfs": int(sum(r < -40 for r in rms)),
    }
    if codes is None or not isinstance(lm.own_codec, SynthCodec):
        return out
    scorer = ExactScorer(lm.codebook_size)
    per_s = [scorer.loglik_any_phase(codes[:, i * 50 : (i + 1) * 50].numpy()) for i in range(codes.shape[-1] // 50)]
    tens = [round(sum(per_s[i : i + 10]) / len(per_s[i : i + 10]), 3) for i in range(0, len(per_s), 10)]
    out["grammar_loglik_per_10s"] = tens
    out["grammar_loglik_worst_10s_minus_first"] = round(min(tens) - tens[0], 3) if tens else None
    return out


if __name__ == "__main__":
    one_line_errors(main)

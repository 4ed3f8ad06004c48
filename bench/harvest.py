"""Teacher-forced harvest throughput: frames/s by clips per pass, and the share spent writing
the store, as JSON. Audio: synthetic tones written to a temporary folder.

    python bench/harvest.py --model tiny --clips 32 --clip-seconds 10 --layers 1,2,3
    python bench/harvest.py --model random-small --device cuda --clips 64 --layers 6,12,18 --batch-clips 1,16
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import machine, one_line_errors

from engine.model import load_musicgen
from engine.wavfile import write_wav
from sae.harvest import audio_clips, harvest_to_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--clip-seconds", type=float, default=10.0)
    parser.add_argument("--layers", default="1,2,3")
    parser.add_argument("--batch-clips", default="1,8", help="comma-separated clips per pass to compare")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    lm = load_musicgen(args.model, args.device, args.dtype)
    layers = [int(x) for x in args.layers.split(",")]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        audio = Path(tmp) / "audio"
        audio.mkdir()
        t = np.arange(int(32000 * args.clip_seconds)) / 32000
        for i in range(args.clips):
            write_wav(audio / f"tone{i:04d}.wav", 0.3 * np.sin(2 * np.pi * (110 + 7 * i) * t), 32000)
        clips = audio_clips(audio, args.clip_seconds)
        harvest_to_store(lm, clips[:2], layers, Path(tmp) / "warm-up", "audio")  # first-call costs
        for batch in (int(x) for x in args.batch_clips.split(",")):
            writer = harvest_to_store(lm, clips, layers, Path(tmp) / f"acts-{batch}", "audio", batch_clips=batch)
            runs.append({
                "batch_clips": batch,
                "frames": writer.frames,
                "seconds": round(writer.seconds, 2),
                "frames_per_s": round(writer.frames / writer.seconds, 1),
                "store_write_share": round(writer.write_s / writer.seconds, 3),
                "store_write_mb_per_s": round(
                    writer.frames * len(layers) * lm.hidden_size * 2 / 2**20 / max(writer.write_s, 1e-9), 1
                ),
            })  # fmt: skip
    result = {
        "model": args.model,
        "device": str(lm.device),
        "machine": machine(lm.device),
        "layers": layers,
        "runs": runs,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    one_line_errors(main)

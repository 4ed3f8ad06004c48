"""`mgsteer import-audiocraft`: a MusicGen trained with audiocraft, as a folder `--model` loads."""

from __future__ import annotations

import argparse
import sys

from engine.errors import MgsteerError
from engine.outputs import output_dir


def add_import_command(sub) -> None:
    i = sub.add_parser(
        "import-audiocraft",
        help="convert an audiocraft MusicGen export (state_dict.bin + compression_state_dict.bin) for --model",
    )
    i.add_argument("src", help="the folder holding state_dict.bin and compression_state_dict.bin")
    i.add_argument("--out", required=True, help="folder to write the transformers checkpoint into")
    i.add_argument(
        "--text-encoder", help="T5 folder or hub id (not given: the one the checkpoint names, e.g. google-t5/t5-base)"
    )
    i.add_argument(
        "--codec",
        help="EnCodec folder or hub id (not given: the one the checkpoint names, e.g. facebook/encodec_32khz)",
    )
    i.set_defaults(func=cmd_import_audiocraft)


def cmd_import_audiocraft(args: argparse.Namespace) -> None:
    from engine.audiocraft_import import UnmappedCheckpoint, import_audiocraft
    from engine.model import load_musicgen

    out = output_dir(args.out)
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise MgsteerError(f"--out '{out}' holds other files; give an empty folder or an earlier import to replace")
    try:
        import_audiocraft(args.src, out, args.text_encoder, args.codec)
    except UnmappedCheckpoint as exc:
        for problem in exc.problems:
            print(f"does not map: {problem}", file=sys.stderr)
        raise
    lm = load_musicgen(str(out), device="cpu", dtype="float32")  # the folder loads the way --model will
    print(
        f"wrote {out}: {lm.family}, {lm.num_layers} layers × {lm.hidden_size}, {lm.num_codebooks} codebooks, "
        f"{lm.parameter_count() / 1e6:.0f} M parameters; play it with --model {out}"
    )

"""Every GPU figure in one call: the `cuda` tests and the GPU benchmarks, in stages that each
have their own time limit, on a machine that may be lent for minutes only.

Why one script: a borrowed GPU comes rarely, for a few minutes, on an image we do not
control (its own python3, torch and transformers; no soundfile, python-osc, mido or PyQt6;
no network). Packages it lacks travel as wheels (`make gpu-wheels` → `.gpu-wheels/`) and are
installed into a temporary folder, nothing else is touched. A stage that fails or runs out
of time records a one-line reason and the next one runs; the JSON is rewritten after every
stage, so even a check cut short leaves every figure it reached.

    python3 bench/gpu_check.py --out OUT                        # on the GPU machine, from the repo root
    python3 bench/gpu_check.py --out OUT --device cpu --quick   # the same stages, small, here

Writes OUT/gpu_check.json (machine, wheels, one entry per stage: ok, seconds, the stage's JSON
or its reason), OUT/pytest.log and OUT/stages.log (every stage's stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
PEER_MISSING = "needs eai-sparsify"  # bench/sae_train.py's line when the peer cannot be imported


@dataclass
class Stage:
    """One step of the check: a command (a benchmark printing JSON, or pytest) and a limit."""

    name: str
    argv: list[str]
    limit_s: float
    fallback: list[str] | None = None  # run instead when `argv` says its peer is missing


def stages(device: str, quick: bool) -> list[Stage]:
    """The stages in order of value: what a short lease must reach first comes first."""
    py = sys.executable
    if quick:
        small = large = ["--model", "tiny", "--steps", "4", "--warmup", "2", "--expansion", "2", "--k", "8"]
        live = low = ["--model", "tiny", "--seconds", "4"]
        harvest = ["--model", "tiny", "--clips", "4", "--clip-seconds", "2", "--layers", "1,2", "--batch-clips", "1,2"]
        sae = ["--d", "64", "--features", "256", "--rows", "8192", "--expansion", "4", "--k", "8", "--steps", "10",
               "--batch-size", "256"]  # fmt: skip
    else:
        small = ["--model", "random-small"]
        large = ["--model", "random-medium,random-large"]
        live = ["--model", "random-small", "--seconds", "60"]
        low = ["--model", "random-small", "--seconds", "30"]
        harvest = ["--model", "random-small", "--clips", "64", "--clip-seconds", "10", "--layers", "6,12,18",
                   "--batch-clips", "1,16"]  # fmt: skip
        sae = ["--d", "1024", "--expansion", "32", "--k", "100", "--steps", "100"]
    on = ["--device", device]
    # The quick stages take seconds alone, but a busy 2-core CI machine can stretch them ten-fold:
    # they keep the full stages' limits (the test's own timeout covers their sum).
    return [
        Stage("cuda_tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"], 150),
        Stage("stream_small_fp16", [py, str(BENCH / "stream.py"), *small, *on, "--dtype", "float16"], 75),
        Stage("stream_small_bf16", [py, str(BENCH / "stream.py"), *small, *on, "--dtype", "bfloat16"], 75),
        Stage("live_default", [py, str(BENCH / "live.py"), *live, *on, "--dtype", "float16"], 90),
        Stage("live_low", [py, str(BENCH / "live.py"), *low, *on, "--dtype", "float16", "--latency", "low"], 60),
        Stage("stream_large_bf16", [py, str(BENCH / "stream.py"), *large, *on, "--dtype", "bfloat16"], 120),
        Stage("harvest", [py, str(BENCH / "harvest.py"), *harvest, *on], 60),
        Stage(
            "sae_train",
            [py, str(BENCH / "sae_train.py"), *sae, *on, "--against", "sparsify"],
            75,
            fallback=[py, str(BENCH / "sae_train.py"), *sae, *on],
        ),
    ]


def install_wheels(folder: Path | None, target: Path) -> dict:
    """pip-install the carried wheels into `target` (no index, no dependencies: the image's
    own packages stay as they are)."""
    wheels = sorted(folder.glob("*.whl")) if folder is not None and folder.is_dir() else []
    if not wheels:
        return {"dir": None if folder is None else str(folder), "installed": [], "note": "no wheels carried"}
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--disable-pip-version-check", "--target", str(target), *map(str, wheels)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    names = [w.name.split("-")[0] for w in wheels]
    if done.returncode != 0:
        return {"dir": str(folder), "installed": [], "error": last_line(done.stderr) or "pip failed"}
    return {"dir": str(folder), "installed": names}


def last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def parse_json(stdout: str) -> dict | list | None:
    """A benchmark's JSON: the whole of stdout, or from the first line that opens an object."""
    try:
        return json.loads(stdout)
    except ValueError:
        lines = stdout.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("{"):
                try:
                    return json.loads("\n".join(lines[i:]))
                except ValueError:
                    continue
    return None


def pytest_counts(junit: Path) -> dict:
    """Passed, failed, errors, skipped, and each failure's first line, from pytest's JUnit XML."""
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed_tests"] = {
        case.get("name"): last_line(bad.get("message") or bad.text or "")[:300]
        for case in suite.iter("testcase")
        for bad in (*case.findall("failure"), *case.findall("error"))
    }
    return counts


class Check:
    """Runs the stages against one deadline and keeps the JSON on disk current."""

    def __init__(self, out: Path, budget_s: float, env: dict) -> None:
        self.out = out
        self.deadline = time.monotonic() + budget_s
        self.env = env
        self.result: dict = {"stages": {}}
        self.log = (out / "stages.log").open("w")

    def save(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps(self.result, indent=1) + "\n")

    def run(self, stage: Stage) -> None:
        left = self.deadline - time.monotonic()
        if left < 10:
            self.record(stage, {"ok": False, "seconds": 0.0, "error": "not run: the check's time budget is spent"})
            return
        limit = min(stage.limit_s, left)
        entry = self.execute(stage, stage.argv, limit)
        if stage.fallback and not entry["ok"] and PEER_MISSING in entry.get("error", ""):
            peer = entry["error"]
            entry = self.execute(stage, stage.fallback, min(limit, self.deadline - time.monotonic()))
            entry["peer_unavailable"] = peer
        self.record(stage, entry)

    def execute(self, stage: Stage, argv: list[str], limit: float) -> dict:
        junit = None
        if stage.name == "cuda_tests":
            junit = Path(tempfile.mkdtemp()) / "junit.xml"
            argv = [*argv, f"--junitxml={junit}"]
        started = time.monotonic()
        print(f"[{stage.name}] {' '.join(Path(a).name if a.startswith('/') else a for a in argv[1:])} "
              f"(limit {limit:.0f} s)", flush=True)  # fmt: skip
        try:
            done = subprocess.run(argv, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired as exc:
            self.write_log(stage.name, exc.stderr)
            return {
                "ok": False,
                "seconds": round(time.monotonic() - started, 1),
                "error": f"timed out after {limit:.0f} s",
            }
        seconds = round(time.monotonic() - started, 1)
        self.write_log(stage.name, done.stderr)
        if junit is not None:
            (self.out / "pytest.log").write_text(done.stdout + done.stderr)
            counts = pytest_counts(junit) if junit.is_file() else None
            entry = {"ok": done.returncode == 0, "seconds": seconds, "result": counts}
            if done.returncode != 0:
                entry["error"] = last_line(done.stdout) or last_line(done.stderr)
            return entry
        if done.returncode != 0:
            return {
                "ok": False,
                "seconds": seconds,
                "error": last_line(done.stderr) or f"exit status {done.returncode}",
            }
        parsed = parse_json(done.stdout)
        if parsed is None:
            return {"ok": False, "seconds": seconds, "error": "printed no JSON"}
        return {"ok": True, "seconds": seconds, "result": parsed}

    def write_log(self, name: str, stderr: str | bytes | None) -> None:
        text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr or ""
        self.log.write(f"===== {name}\n{text}\n")
        self.log.flush()

    def record(self, stage: Stage, entry: dict) -> None:
        self.result["stages"][stage.name] = entry
        self.save()
        state = "ok" if entry["ok"] else f"FAILED: {entry.get('error')}"
        print(f"[{stage.name}] {state} ({entry['seconds']} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-check-out", help="folder for gpu_check.json and the logs")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="the same stages on the tiny model, small")
    parser.add_argument("--wheels", default=str(ROOT / ".gpu-wheels"), help="carried wheels ('none': none)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="time for all stages together")
    parser.add_argument("--only", help="comma-separated stage names")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    site = Path(tempfile.mkdtemp(prefix="gpu-check-site-"))
    wheels = install_wheels(None if args.wheels == "none" else Path(args.wheels), site)
    paths = [str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p), PYTHONUNBUFFERED="1",
               PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", TOKENIZERS_PARALLELISM="false")  # fmt: skip
    check = Check(out, args.budget_s, env)
    sys.path[:0] = [str(site), str(ROOT)]
    from common import machine  # after the carried wheels are on the path, like every stage

    check.result.update(device=args.device, quick=args.quick, machine=machine(args.device), wheels=wheels)
    check.save()
    started = time.monotonic()
    wanted = set(args.only.split(",")) if args.only else None
    for stage in stages(args.device, args.quick):
        if wanted is None or stage.name in wanted:
            check.run(stage)
    check.result["seconds"] = round(time.monotonic() - started, 1)
    check.result["stages_ok"] = sum(entry["ok"] for entry in check.result["stages"].values())
    check.save()
    print(f"gpu_check: {check.result['stages_ok']}/{len(check.result['stages'])} stages ok in "
          f"{check.result['seconds']} s → {out / 'gpu_check.json'}")  # fmt: skip


if __name__ == "__main__":
    main()

"""Note labels from a pretrained transcriber: basic-pitch's network on ONNX Runtime.

basic-pitch (Spotify's polyphonic note transcriber) ships its trained network as an ONNX file
inside its wheel. The wheel's own dependencies pin an old TensorFlow and NumPy on Linux, so it
is installed without them (`pip install --no-deps basic-pitch==0.4.0`) and only its ONNX file
is used, run here on onnxruntime: the package itself is never imported.

A window's notes come from the network's onset and frame posteriorgrams (onset peaks above 0.5
start a note, which lasts while its frame posterior stays above 0.3, notes shorter than 11
frames ≈ 128 ms are dropped: basic-pitch's defaults), and are summed up as pitch range,
polyphony and onset rate, which the top windows are contrasted on with random ones.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import MgsteerError
from sae.labelers.base import Label, Labeler, WindowCache, WindowSet, effect_size, resample

SAMPLE_RATE = 22050
HOP = 256
FPS = SAMPLE_RATE / HOP  # posteriorgram frames per second
WINDOW = 2 * SAMPLE_RATE - HOP  # the network's input length
OVERLAP_FRAMES = 30  # frames overlapping between consecutive network windows
LOWEST_MIDI = 21  # the posteriorgram's 88 bins are the piano's keys
ONSET_THRESHOLD, FRAME_THRESHOLD, MIN_FRAMES, GAP_FRAMES = 0.5, 0.3, 11, 11
MODEL_FILE = Path("saved_models") / "icassp_2022" / "nmp.onnx"
INSTALL = "pip install --no-deps basic-pitch==0.4.0"

# summary → (label when higher than random, label when lower, least audible difference)
CONTRASTS = {
    "pitch_median": ("high notes", "low notes", 3.0),
    "pitch_span": ("wide pitch range", "narrow pitch range", 3.0),
    "polyphony": ("chords", "single notes", 0.3),
    "onset_rate": ("many notes", "few notes", 1.0),
}
MIN_EFFECT = 0.8


@dataclass(frozen=True)
class Note:
    start_s: float
    end_s: float
    midi: int
    confidence: float


@dataclass(frozen=True)
class NoteSummary:
    notes: tuple[Note, ...]
    pitch_median: float  # MIDI; 0 without notes
    pitch_span: float  # highest − lowest MIDI note
    polyphony: float  # mean notes sounding at once, over frames with any
    onset_rate: float  # notes per second


def model_path() -> Path:
    """basic-pitch's ONNX file, located without importing the package (whose imports reach for
    TensorFlow)."""
    spec = importlib.util.find_spec("basic_pitch")
    if spec is None or not spec.submodule_search_locations:
        raise MgsteerError(f"the notes labeler needs basic-pitch's model: {INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
    if not path.is_file():
        raise MgsteerError(f"basic-pitch is installed without {MODEL_FILE}: reinstall it ({INSTALL})")
    return path


class NoteTranscriber:
    def __init__(self, threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MgsteerError("the notes labeler runs on onnxruntime: pip install 'musicgen-steer[onnx]'") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model_path()), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def posteriorgrams(self, audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame and onset posteriors `[frames, 88]` at FPS, windowed as basic-pitch does it."""
        x = resample(np.asarray(audio, np.float32), sample_rate, SAMPLE_RATE)
        overlap = OVERLAP_FRAMES * HOP
        padded = np.concatenate([np.zeros(overlap // 2, np.float32), x])
        hop = WINDOW - overlap
        starts = range(0, len(padded), hop)
        batch = np.stack([np.pad(padded[s : s + WINDOW], (0, WINDOW - len(padded[s : s + WINDOW]))) for s in starts])
        names = ["StatefulPartitionedCall:1", "StatefulPartitionedCall:2"]  # basic-pitch's note, onset
        frame, onset = self.session.run(names, {self.input: batch[..., None]})
        keep = slice(OVERLAP_FRAMES // 2, -(OVERLAP_FRAMES // 2))
        frames = int(len(x) * FPS / SAMPLE_RATE)
        return frame[:, keep].reshape(-1, 88)[:frames], onset[:, keep].reshape(-1, 88)[:frames]

    def notes(self, audio: np.ndarray, sample_rate: int) -> list[Note]:
        frame, onset = self.posteriorgrams(audio, sample_rate)
        out = []
        peaks = (onset > ONSET_THRESHOLD) & (onset >= np.roll(onset, 1, 0)) & (onset >= np.roll(onset, -1, 0))
        for t, p in zip(*np.nonzero(peaks), strict=True):
            end, quiet = t + 1, 0
            while end < len(frame) and quiet < GAP_FRAMES and not peaks[end, p]:
                quiet = quiet + 1 if frame[end, p] < FRAME_THRESHOLD else 0
                end += 1
            end -= quiet
            if end - t >= MIN_FRAMES:
                out.append(Note(float(t / FPS), float(end / FPS), LOWEST_MIDI + int(p), float(frame[t:end, p].mean())))
        return sorted(out, key=lambda n: (n.start_s, n.midi))

    def summary(self, audio: np.ndarray, sample_rate: int) -> NoteSummary:
        notes = self.notes(audio, sample_rate)
        seconds = max(len(audio) / sample_rate, 1e-9)
        if not notes:
            return NoteSummary((), 0.0, 0.0, 0.0, 0.0)
        pitches = np.array([n.midi for n in notes])
        grid = np.arange(0.0, seconds, 1 / FPS)
        sounding = np.array([sum(n.start_s <= t < n.end_s for n in notes) for t in grid])
        return NoteSummary(
            tuple(notes),
            float(np.median(pitches)),
            float(pitches.max() - pitches.min()),
            float(sounding[sounding > 0].mean()) if (sounding > 0).any() else 0.0,
            len(notes) / seconds,
        )


class NotesLabeler(Labeler):
    name = "notes"

    def __init__(self) -> None:
        self.transcriber = NoteTranscriber()
        self._cache = WindowCache()

    def summarise(self, audio: list[np.ndarray], sample_rate: int) -> list[NoteSummary]:
        return self._cache.get(
            audio, sample_rate, lambda clips: [self.transcriber.summary(a, sample_rate) for a in clips]
        )

    def label(self, windows: WindowSet) -> list[Label]:
        top = self.summarise(windows.top, windows.sample_rate)
        rand = self.summarise(windows.random, windows.sample_rate)
        if not top or len(rand) < 2:
            return []
        out = []
        for attr, (higher, lower, least) in CONTRASTS.items():
            t = np.array([getattr(s, attr) for s in top])
            r = np.array([getattr(s, attr) for s in rand])
            effect = effect_size(t, r)
            if abs(effect) >= MIN_EFFECT and abs(t.mean() - r.mean()) >= least:
                evidence = {"mean_top": round(float(t.mean()), 3), "mean_random": round(float(r.mean()), 3)}
                out.append(Label(higher if effect > 0 else lower, min(abs(effect) / 4, 1.0), evidence))
        return sorted(out, key=lambda lab: -lab.score)

    def score(self, label: str, audio: list[np.ndarray], sample_rate: int) -> np.ndarray | None:
        for attr, (higher, lower, _) in CONTRASTS.items():
            if label.strip() in (higher, lower):
                sign = 1.0 if label.strip() == higher else -1.0
                return np.array([sign * getattr(s, attr) for s in self.summarise(audio, sample_rate)])
        return None

"""A planted grammar of synth-codec token sequences, and its exact scorer.

Each clip draws five latent attributes, independently and uniformly:

| attribute | values | what it fixes in the tokens |
|---|---|---|
| key | 4 tonics (C, D, F, A) × major/minor | the pitch classes a note may take |
| register | low, mid, high | the octave notes lie in (C3–B3, C4–B4, C5–B5) |
| tempo | slow, fast | a note every 25 or 10 frames (0.5 s, 0.2 s); a slow note's last 5 frames are a rest |
| timbre | dark, bright | the timbre token (a soft triangle, a bright saw) |
| density | sparse, busy | per bar, a kick on its first note and a snare on its third; or a kick on every note |

Within a clip a note starts every tempo's length (slow notes detached by a release rest, fast
ones legato); a bar is four notes: the tonic, then the key's third (major or minor: the mode
is heard from the second note on), then two drawn uniformly from the key's notes, all in the
register's octave; so a key and its relative major or minor are told apart. A register is the
same octave for every key, so the key fixes only the pitch-class codebook and the register only the
octave: neither is written as a conjunction of the two. Loudness is constant. So the
likelihood of a token sequence under given attributes is a product over frames, and the
posterior of every attribute given any sequence (a model's output included) is exact: each
frame's note (its pitch-class and octave-level tokens together) and each of its other tokens
is explained by the grammar with probability 1 − ε and by noise (uniform over the
vocabulary) with probability ε, so sequences that break the grammar still get a posterior.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from engine.synth_codec import LEVEL_STEPS, note_tokens, token_notes

# Four tonics, not twelve: each key must be heard in enough clips for its features to be found
# and tested on held-out ones, and eight keys keep that affordable on a laptop.
TONICS = ("C", "D", "F", "A")
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
MODES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
# The lowest note of each register's octave. Registers do not overlap: each is an octave token
# of its own, where two-octave ranges left the middle one only the conjunction of two octaves
# that its neighbours also play (docs/WORLD.md).
REGISTERS = {"low": 48, "mid": 60, "high": 72}
TEMPOS = {"slow": 25, "fast": 10}
# Frames of rest that end each note. Slow is heard by a rest of its own, not only by the note
# change that does not come at a fast note's length: like a drum density, a tempo that is only
# another's absence gives a sparse dictionary's features nothing to fire on (docs/WORLD.md).
RELEASES = {"slow": 5, "fast": 0}
TIMBRES = {"dark": 1, "bright": 3 + 4 * 6}  # triangle at brightness 0; saw at brightness 6
# Each bar's drum hits, note by note (0 = none). Both values are something heard, not one the
# other's silence: a value that is only an absence of hits has no feature to detect it, since a
# sparse dictionary's features fire for what is there (docs/WORLD.md).
DENSITIES = {"sparse": (1, 0, 2, 0), "busy": (1, 1, 1, 1)}  # kick 1, snare 2
LEVEL = 13  # the octave-level token's level step: −6.4 dBFS
BAR = 4  # notes per bar: the tonic, the third, two free notes
PHASES = BAR * math.lcm(*TEMPOS.values())  # frames after which every tempo's bar starts again
EPSILON = 0.01
OPENING_FRAMES = min(TEMPOS.values())  # the shortest note: a clip's opening, before any note changes

ATTRIBUTES = ("key", "register", "tempo", "timbre", "density")
# Raised with every change to the music the grammar writes: a world trained on another version
# learned other music, so it is neither resumed nor reused.
GRAMMAR = 3


def attribute_values() -> dict[str, tuple[str, ...]]:
    keys = tuple(f"{tonic} {mode}" for mode in MODES for tonic in TONICS)
    return {
        "key": keys,
        "register": tuple(REGISTERS),
        "tempo": tuple(TEMPOS),
        "timbre": tuple(TIMBRES),
        "density": tuple(DENSITIES),
    }


@dataclass(frozen=True)
class Attributes:
    key: str  # e.g. "A minor"
    register: str
    tempo: str
    timbre: str
    density: str

    def as_dict(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in ATTRIBUTES}


def scale_notes(key: str, register: str) -> np.ndarray:
    """The MIDI notes a note may take: the key's pitch classes in the register's octave."""
    tonic, mode = key.split()
    classes = {(PITCH_CLASSES.index(tonic) + step) % 12 for step in MODES[mode]}
    low = REGISTERS[register]
    return np.array([n for n in range(low, low + 12) if n % 12 in classes])


def bar_opening(key: str, register: str) -> tuple[int, int]:
    """The MIDI notes of a bar's first two notes: the tonic and the key's third, both in the
    register's octave (the third below the tonic where the octave ends before it)."""
    tonic, mode = key.split()
    low = REGISTERS[register]
    root = low + PITCH_CLASSES.index(tonic)
    third = root + MODES[mode][2]
    return root, third if third < low + 12 else third - 12


def most_probable(posterior: dict[str, dict[str, float]]) -> Attributes:
    """Each attribute's most probable value under a posterior (`ExactScorer.posterior`)."""
    return Attributes(*(max(posterior[name], key=posterior[name].get) for name in ATTRIBUTES))


def sample_attributes(rng: np.random.Generator) -> Attributes:
    values = attribute_values()
    return Attributes(*(values[name][rng.integers(len(values[name]))] for name in ATTRIBUTES))


def sample_clip(rng: np.random.Generator, attrs: Attributes, frames: int) -> np.ndarray:
    """Synth-codec codes `[4, frames]` of one clip under `attrs`."""
    length = TEMPOS[attrs.tempo]
    notes = scale_notes(attrs.key, attrs.register)
    melody = np.zeros(frames, dtype=np.int64)
    fixed = dict(enumerate(bar_opening(attrs.key, attrs.register)))
    sounding = length - RELEASES[attrs.tempo]
    for index, start in enumerate(range(0, frames, length)):
        free = notes[rng.integers(len(notes))]
        melody[start : start + sounding] = fixed.get(index % BAR, free)
    codes = np.zeros((4, frames), dtype=np.int64)
    codes[:2] = note_tokens(melody, LEVEL)
    codes[2] = TIMBRES[attrs.timbre]
    codes[3] = drum_track(attrs.tempo, attrs.density, frames)
    return codes


def prompt_for(attrs: Attributes, named: tuple[str, ...] = ATTRIBUTES) -> str:
    """A text prompt naming some attributes, e.g. "fast A minor melody, bright, busy drums, low"."""
    words = []
    if "tempo" in named:
        words.append(attrs.tempo)
    words.append(f"{attrs.key} melody" if "key" in named else "melody")
    extra = [attrs.timbre if "timbre" in named else None]
    extra.append(f"{attrs.density} drums" if "density" in named else None)
    extra.append(f"{attrs.register} register" if "register" in named else None)
    return ", ".join([" ".join(words), *[e for e in extra if e]])


class ExactScorer:
    """Posterior of each attribute given codes `[4, frames]`, from the grammar itself."""

    def __init__(self, vocab: int = 128, epsilon: float = EPSILON) -> None:
        self.vocab, self.epsilon = vocab, epsilon
        self.values = attribute_values()
        self.combos = list(itertools.product(*(self.values[name] for name in ATTRIBUTES)))

    def log_likelihoods(self, codes: np.ndarray, start: int = 0) -> np.ndarray:
        """log P(codes | attributes) for every combination of attribute values, for codes that
        begin `start` frames into a clip: a sum of independent per-codebook terms, each
        computed once per value it depends on."""
        codes = np.asarray(codes)
        v, frames = self.values, codes.shape[1]
        # a note is its two tokens together; one at another level is no note of the grammar's,
        # and a rest is both tokens 0
        at_level = ((codes[1] - 1) % LEVEL_STEPS == LEVEL) & (codes[0] > 0)
        rest = (codes[0] == 0) & (codes[1] == 0)
        notes = np.where(at_level, token_notes(codes[0], codes[1]), np.where(rest, 0, -1))
        pitch = {
            (k, r, t): self._pitch(notes, start, k, r, t) for k in v["key"] for r in v["register"] for t in v["tempo"]
        }
        timbre = {name: self._matches(codes[2], np.full(frames, TIMBRES[name])) for name in v["timbre"]}
        drums = {
            (t, d): self._matches(codes[3], drum_track(t, d, start + frames)[start:])
            for t in v["tempo"]
            for d in v["density"]
        }
        return np.array([pitch[(k, r, t)] + timbre[tb] + drums[(t, d)] for k, r, t, tb, d in self.combos])

    def posterior(self, codes: np.ndarray, start: int = 0) -> dict[str, dict[str, float]]:
        """P(attribute = value | codes) for every attribute and value (uniform prior), for codes
        that begin `start` frames into a clip."""
        logl = self.log_likelihoods(codes, start)
        weights = np.exp(logl - logl.max())
        weights /= weights.sum()
        out: dict[str, dict[str, float]] = {name: dict.fromkeys(self.values[name], 0.0) for name in ATTRIBUTES}
        for w, combo in zip(weights, self.combos, strict=True):
            for name, value in zip(ATTRIBUTES, combo, strict=True):
                out[name][value] += float(w)
        return out

    def loglik_per_token(self, codes: np.ndarray, start: int = 0) -> float:
        """The best attributes' log-likelihood per token: 0 for music the grammar writes with
        certainty, log(ε/V) ≈ −9.5 for noise (a quality proxy for steered music)."""
        codes = np.asarray(codes)
        return float(self.log_likelihoods(codes, start).max() / codes.size)

    def loglik_any_phase(self, codes: np.ndarray) -> float:
        """`loglik_per_token` at the clip position that suits `codes` best: a window cut from
        endless play starts anywhere in a bar (every bar's place repeats within PHASES frames)."""
        return max(self.loglik_per_token(codes, start) for start in range(PHASES))

    def predict(self, codes: np.ndarray, start: int = 0) -> Attributes:
        return most_probable(self.posterior(codes, start))

    # ---- per-codebook log-likelihoods -------------------------------------------------------
    def _mix(self, p_grammar: np.ndarray, vocab: int) -> float:
        """Σ log((1 − ε)·P_grammar + ε/vocab) over frames."""
        return float(np.log((1 - self.epsilon) * p_grammar + self.epsilon / vocab).sum())

    def _pitch(self, pitch: np.ndarray, start: int, key: str, register: str, tempo: str) -> float:
        """The note track's term: `pitch` holds each frame's MIDI note (0 rest, −1 off level)."""
        notes, length = scale_notes(key, register), TEMPOS[tempo]
        tonic, third = bar_opening(key, register)
        frame = start + np.arange(len(pitch))
        released = frame % length >= length - RELEASES[tempo]
        # a note's first frame, or the first frame seen of a note that began before `start`:
        # either way its value follows the grammar's draw for its place in the bar
        starts = (frame % length == 0) | (frame == start)
        place = (frame // length) % BAR
        free = np.isin(pitch, notes) / len(notes)
        p_start = np.select([place == 0, place == 1], [pitch == tonic, pitch == third], free)
        previous = np.concatenate([[-2], pitch[:-1]])
        held = (pitch == previous) & (pitch > 0)
        p = np.select([released, starts], [pitch == 0, p_start], held.astype(float))  # a release is a rest first
        return self._mix(p, self.vocab**2)

    def _matches(self, tokens: np.ndarray, expected: np.ndarray) -> float:
        return self._mix((tokens == expected).astype(float), self.vocab)


def drum_track(tempo: str, density: str, frames: int) -> np.ndarray:
    """The percussion codebook the grammar fixes: the density's bar pattern on note starts."""
    track = np.zeros(frames, dtype=np.int64)
    pattern = DENSITIES[density]
    for index, start in enumerate(range(0, frames, TEMPOS[tempo])):
        track[start] = pattern[index % BAR]
    return track

"""What the window plays: a model, an optional SAE and its catalog, a parameter bus and a host.

Qt-free on purpose: loading runs on a worker thread and the tests build sessions without a
window. Controllers other than the window (OSC, MIDI) are attached by whoever opens the
window (the command line) through `Controllers`, so the GUI never starts a server itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import limits
from engine.audio import DeviceSink, NullSink, WavRecorder
from engine.backends import default_backend, open_backend
from engine.errors import MgsteerError
from engine.host import Host, HostConfig
from engine.melody_input import open_melody
from engine.model import LoadedModel, load_musicgen
from engine.params import ParameterBus
from engine.steering import Halves
from engine.tokenloop import SamplingConfig
from sae.catalog import load_catalog
from sae.concept import with_concepts
from sae.files import LoadedSAE, load_sae


@dataclass(frozen=True)
class Backend:
    """Which runtime steps the model: auto (the fastest here), torch, or ONNX Runtime on an
    exported folder."""

    name: str = field(default_factory=default_backend)
    onnx_dir: str | None = None
    precision: str = "auto"


@dataclass(frozen=True)
class SessionSpec:
    """How to open a session; the window keeps it to reopen with another model or SAE. Every
    setting `mgsteer play` has for the engine is here too, so `play --gui` plays the same."""

    model: str = "tiny"
    sae: str | None = None
    concepts: tuple[str, ...] = ()  # knobs from examples made before, added to the SAE as its next features
    device: str = "auto"
    dtype: str = "auto"
    knobs: int = 8
    prompt: str = "simple melody"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    no_audio: bool = False
    audio_device: str | int | None = None
    latency: str = "default"  # engine.host latency profile
    lookahead_ms: float | None = None  # not given: the profile's
    chunk: int | None = None  # not given: the profile's
    smoothing_ms: float = 50.0
    graph: bool = True
    backend: Backend = field(default_factory=Backend)
    record: str | None = None  # a WAV that records what plays
    record_seconds: float | None = None  # …this much of it (a timed run's lookahead is not played)
    melody: str | None = None  # a melody model follows this file's melody…
    melody_input: str | int | None = None  # …or this sound input's ("": the default input)
    melody_seconds: float = 10.0  # …last seconds
    halves: Halves = "both"  # the CFG halves the knobs steer (engine.host.HostConfig.halves)


@dataclass
class Controllers:
    """Controllers attached to a session's bus by the caller: the MIDI controller (for
    learn), their state in a few words for the status panel, and how to stop them."""

    midi: Any = None  # midi.mapping.MidiController
    describe: Callable[[], str] = lambda: "OSC off · MIDI off"
    close: Callable[[], None] = lambda: None


@dataclass
class Session:
    spec: SessionSpec
    lm: LoadedModel
    bus: ParameterBus
    host: Host
    sae: LoadedSAE | None = None
    catalog: dict | None = None  # the SAE's features.json, if it was labelled
    catalog_note: str = ""
    controllers: Controllers = field(default_factory=Controllers)
    harvest_lm: LoadedModel | None = None  # a second copy for knobs from examples (knob_from_examples)
    concept_knobs: list[tuple[int, str]] = field(default_factory=list)  # (feature, name) of each spec.concepts
    # every concept folder added to the SAE, in feature order (the spec's, then knobs made here):
    # what a preset saved from this session must load again for its feature ids to hold
    concepts: list[str] = field(default_factory=list)

    @property
    def feature_count(self) -> int:
        return self.sae.cfg.d_sae if self.sae is not None else 0

    def close(self) -> None:
        self.controllers.close()
        self.host.stop()
        self.bus.close()


def open_session(spec: SessionSpec, progress: Callable[[str], None] = lambda _: None) -> Session:
    """Load everything (slow: run it off the GUI thread); meters follow the knobs' features."""
    progress(f"loading {spec.model} …")
    lm = load_musicgen(spec.model, spec.device, spec.dtype)
    sae, catalog, note = None, None, ""
    if spec.sae:
        progress(f"loading SAE {spec.sae} …")
        sae = load_sae(spec.sae, lm.device)
        try:
            catalog = load_catalog(spec.sae)
        except MgsteerError as exc:  # an unlabelled SAE still plays: features by id
            note = str(exc)
    if spec.concepts:
        progress(f"adding {len(spec.concepts)} knob(s) from examples …")
    sae, concept_knobs = with_concepts(sae, list(spec.concepts), lm.device)
    progress("starting the engine …")
    bus = ParameterBus(
        knob_count=spec.knobs, prompt=spec.prompt, smoothing_ms=spec.smoothing_ms,
        feature_count=sae.cfg.d_sae if sae else None,
    )  # fmt: skip
    channels = lm.audio_channels
    sink = (
        NullSink(lm.sample_rate, channels=channels)
        if spec.no_audio
        else DeviceSink(lm.sample_rate, spec.audio_device, channels=channels)
    )
    config = HostConfig.for_latency(
        spec.latency, lookahead_ms=spec.lookahead_ms, chunk=spec.chunk, sampling=spec.sampling, graph=spec.graph,
        backend=open_backend(spec.backend.name, spec.backend.onnx_dir, spec.backend.precision, lm, sae, progress),
        meter_knobs=True, melody=open_melody(lm, spec.melody, spec.melody_input, spec.melody_seconds),
        halves=spec.halves,
    )  # fmt: skip
    recorder = WavRecorder(spec.record, lm.sample_rate, spec.record_seconds, channels) if spec.record else None
    host = Host(lm, bus, sink, sae, config, recorder)
    return Session(
        spec=spec, lm=lm, bus=bus, host=host, sae=sae, catalog=catalog, catalog_note=note,
        concept_knobs=concept_knobs, concepts=list(spec.concepts),
    )  # fmt: skip


def example_audio_path(session: Session, feature: int) -> Path | None:
    """The feature's strongest example window on disk, if the catalog has one."""
    if session.catalog is None or session.spec.sae is None:
        return None
    for record in session.catalog.get("features", []):
        if record.get("id") == feature and record.get("examples"):
            path = Path(session.spec.sae) / record["examples"][0]["audio"]
            return path if path.is_file() else None
    return None


@dataclass(frozen=True)
class ExampleKnob:
    """A knob made from examples while playing: the feature it added to the session's SAE."""

    feature: int
    label: str
    folder: Path  # the concept on its own (an SAE folder with one feature: `--sae` it later)
    positive_clips: int
    negative_clips: int
    heldout_auroc: float
    seconds: float  # how long the build took


EXAMPLE_CLIP_SECONDS = 4.0  # the clip length examples are cut into (less for a model trained shorter)


def split_examples(items: list[str]) -> tuple[list[Path], list[str]]:
    """Examples as given in the window: audio files, and prompts (anything that is not a file
    and does not look like one), each generated once."""
    from sae.harvest import AUDIO_EXTENSIONS

    files, prompts = [], []
    for item in items:
        path = Path(item).expanduser()
        if path.is_file():
            files.append(path)
        elif path.suffix.lower() in AUDIO_EXTENSIONS:
            raise MgsteerError(f"example '{item}' is not a file")
        else:
            prompts.append(limits.prompt_text(item, "an example prompt"))
    return files, prompts


def knob_from_examples(
    session: Session,
    positive: list[str],
    negative: list[str],
    method: str,
    label: str,
    progress: Callable[[str], None] = lambda _: None,
) -> ExampleKnob:
    """Build a concept direction from two sets of examples (audio files or prompts,
    `split_examples`) at the SAE's layer and add it to the session's SAE as one more feature.
    Slow: run it off the GUI thread.

    The residuals come from a second copy of the model, loaded here once per session: the
    engine's copy carries the steering edit and plays on meanwhile, and a recording hook on it
    would catch the music's steps as well as the examples'."""
    import time

    from engine.runtime_choice import cache_root
    from sae.concept import append_concept, audio_residuals, build_concept, prompt_residuals, save_concept

    if session.sae is None:
        raise MgsteerError("no SAE is loaded: a knob from examples is added to one (--sae DIR)")
    started = time.perf_counter()
    if session.harvest_lm is None:
        progress(f"loading a second copy of {session.spec.model} for the examples …")
        session.harvest_lm = load_musicgen(session.spec.model, session.spec.device, session.spec.dtype)
    lm, layer = session.harvest_lm, session.sae.cfg.hook_layer
    seconds = min(EXAMPLE_CLIP_SECONDS, lm.context_s)
    sides = []
    for name, items in (("with", positive), ("without", negative)):
        files, prompts = split_examples(items)
        progress(f"reading {len(files)} clips and generating {len(prompts)} {name} '{label}' …")
        clips = audio_residuals(lm, files, layer, seconds) if files else []
        sides.append(clips + (prompt_residuals(lm, prompts, layer, seconds, 1, 0) if prompts else []))
    progress(f"finding the direction ({method}) …")
    concept = build_concept(*sides, method=method)
    slug = "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")[:40] or "knob"
    folder = cache_root() / "concepts" / f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}"
    save_concept(concept, folder, layer, lm.spec)
    feature = append_concept(session.sae, concept)
    session.concepts.append(str(folder))
    session.bus.feature_count = session.sae.cfg.d_sae
    return ExampleKnob(
        feature, label, folder, concept.positive_clips, concept.negative_clips, concept.heldout_auroc,
        time.perf_counter() - started,
    )  # fmt: skip

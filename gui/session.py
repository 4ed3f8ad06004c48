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

from engine.audio import DeviceSink, NullSink, WavRecorder
from engine.backends import default_backend, open_backend
from engine.errors import MgsteerError
from engine.host import Host, HostConfig
from engine.model import LoadedModel, load_musicgen
from engine.params import ParameterBus
from engine.tokenloop import SamplingConfig
from sae.catalog import load_catalog
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
    progress("starting the engine …")
    bus = ParameterBus(
        knob_count=spec.knobs, prompt=spec.prompt, smoothing_ms=spec.smoothing_ms,
        feature_count=sae.cfg.d_sae if sae else None,
    )  # fmt: skip
    sink = NullSink(lm.sample_rate) if spec.no_audio else DeviceSink(lm.sample_rate, spec.audio_device)
    config = HostConfig.for_latency(
        spec.latency, lookahead_ms=spec.lookahead_ms, chunk=spec.chunk, sampling=spec.sampling, graph=spec.graph,
        backend=open_backend(spec.backend.name, spec.backend.onnx_dir, spec.backend.precision, lm, sae, progress),
        meter_knobs=True,
    )  # fmt: skip
    recorder = WavRecorder(spec.record, lm.sample_rate, spec.record_seconds) if spec.record else None
    host = Host(lm, bus, sink, sae, config, recorder)
    return Session(spec=spec, lm=lm, bus=bus, host=host, sae=sae, catalog=catalog, catalog_note=note)


def example_audio_path(session: Session, feature: int) -> Path | None:
    """The feature's strongest example window on disk, if the catalog has one."""
    if session.catalog is None or session.spec.sae is None:
        return None
    for record in session.catalog.get("features", []):
        if record.get("id") == feature and record.get("examples"):
            path = Path(session.spec.sae) / record["examples"][0]["audio"]
            return path if path.is_file() else None
    return None

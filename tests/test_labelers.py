"""CLAP and classifier labelers on tiny random models built in code; the LLM labeler against a
real HTTP server on 127.0.0.1 (good, fenced, malformed, slow, refusing and failing replies)."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from llm_server import GOOD, FakeLLM

from engine.errors import MgsteerError
from sae.labelers import LabelerError, parse_names
from sae.labelers.base import WindowSet
from sae.labelers.clap import ClapLabeler, build_tiny_clap
from sae.labelers.classifier import TINY_CLASSES, ClassifierLabeler, load_classifier
from sae.labelers.llm import LLMConfig, LLMLabeler, confidence_of, parse_reply

SR = 32000


def windows(seed: int = 0) -> WindowSet:
    rng = np.random.default_rng(seed)
    t = np.arange(SR) / SR
    top = [(0.5 * np.sin(2 * np.pi * (300 + 50 * i) * t)).astype(np.float32) for i in range(4)]
    rand = [(0.2 * rng.standard_normal(SR)).astype(np.float32) for _ in range(4)]
    return WindowSet(top, rand, SR)


@pytest.fixture(scope="module")
def clap() -> ClapLabeler:
    return ClapLabeler("tiny", "cpu", vocabulary=("piano", "drums", "violin", "noise", "choir", "bass"))


def test_clap_picks_terms_by_contrast_with_random_windows(clap):
    ws = windows()
    labels = clap.label(ws)
    terms = clap.embed_text(list(clap.vocabulary))
    contrast = (clap.embed_audio(ws.top, SR) @ terms.T).mean(0) - (clap.embed_audio(ws.random, SR) @ terms.T).mean(0)
    expected = [clap.vocabulary[i] for i in contrast.argsort(descending=True)[:3].tolist() if contrast[i] > 0]
    assert [lab.label for lab in labels] == expected
    for lab in labels:
        assert lab.score == pytest.approx(lab.evidence["cos_top"] - lab.evidence["cos_random"], abs=2e-4)
    # the scorer is the cosine of the label's text with each window
    cos = clap.score("piano", ws.top, SR)
    assert cos.shape == (4,) and np.all(np.abs(cos) <= 1.0001)
    direct = clap.embed_audio(ws.top[:1], SR) @ clap.embed_text(["piano"]).T
    assert cos[0] == pytest.approx(float(direct), abs=1e-5)


def test_windows_are_embedded_once_per_run(clap, monkeypatch):
    ws = windows(seed=5)
    fresh = 0.9 * ws.top[0]  # the sines of `windows` are the same in every test
    seen = []
    embed = clap._embed
    monkeypatch.setattr(clap, "_embed", lambda audio, sr: seen.append(len(audio)) or embed(audio, sr))
    first = clap.embed_audio(ws.random, SR)
    again = clap.embed_audio([fresh, *ws.random, fresh], SR)
    assert seen == [4, 1]  # the random windows come from the cache; a repeated window is embedded once
    torch.testing.assert_close(again[1:5], first)
    torch.testing.assert_close(again[0], again[5])
    assert clap.embed_audio(ws.random, 16000).shape == first.shape and seen == [4, 1, 4]  # the rate is in the key


def test_clap_loads_from_a_saved_folder_through_from_pretrained(tmp_path, clap):
    model, extractor, tokenizer = build_tiny_clap()
    for part in (model, extractor, tokenizer):
        part.save_pretrained(tmp_path)
    loaded = ClapLabeler(str(tmp_path), "cpu", vocabulary=clap.vocabulary)
    ws = windows()
    torch.testing.assert_close(loaded.embed_audio(ws.top, SR), clap.embed_audio(ws.top, SR), atol=1e-5, rtol=0)
    torch.testing.assert_close(loaded.embed_text(["piano"]), clap.embed_text(["piano"]))


def test_classifier_contrast_evidence_and_scoring(tmp_path):
    labeler = ClassifierLabeler("tiny", "cpu")
    assert labeler.classes == list(TINY_CLASSES) and labeler.multi_label
    ws = windows()
    labels = labeler.label(ws)
    top, rand = labeler.probabilities(ws.top, SR), labeler.probabilities(ws.random, SR)
    best = int((top.mean(0) - rand.mean(0)).argmax())
    assert labels[0].label == TINY_CLASSES[best]
    assert labels[0].evidence["p_top"] == pytest.approx(float(top[:, best].mean()), abs=1e-4)
    assert labeler.score("piano", ws.top, SR) == pytest.approx(top[:, TINY_CLASSES.index("Piano")].numpy(), abs=1e-5)
    assert labeler.score("a kazoo", ws.top, SR) is None
    model, extractor = load_classifier("tiny")
    model.save_pretrained(tmp_path)
    extractor.save_pretrained(tmp_path)
    again = ClassifierLabeler(str(tmp_path), "cpu")
    torch.testing.assert_close(again.probabilities(ws.top, SR), top)


def test_unreachable_hub_for_clap_is_one_line(tiny_sae_dir):
    env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_OFFLINE="0")
    args = ["--model", "tiny", "--sae", str(tiny_sae_dir), "--features", "0", "--concept", "0=piano"]
    args += ["--scorer", "clap", "--clap-model", "nobody/no-such-clap", "--seconds", "0.2", "--device", "cpu"]
    run = subprocess.run(
        [sys.executable, "-m", "cli.main", "eval-steer", *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "CLAP model 'nobody/no-such-clap'" in lines[0] and "unreachable" in lines[0]


def test_labeler_names_are_checked():
    assert parse_names("descriptors, clap") == ("descriptors", "clap")
    with pytest.raises(MgsteerError, match="unknown labeler"):
        parse_names("descriptors,gpt")


# --- LLM ---------------------------------------------------------------------------------


def llm(url: str, **kw) -> LLMLabeler:
    return LLMLabeler(LLMConfig(url=url, model="audio-model", **kw))


def test_llm_sends_audio_and_reads_fenced_json(monkeypatch):
    monkeypatch.setenv("MGSTEER_LLM_API_KEY", "sekrit")
    with FakeLLM([("content", GOOD)]) as server:
        labels = llm(server.url, max_clips=3).label(windows())
    assert [(lab.label, lab.score) for lab in labels] == [("bright piano", 0.8)]  # 4 on a 1–5 scale
    assert labels[0].evidence["description"] == "a high, clear piano line"
    body, headers = server.requests[0], server.headers[0]
    assert headers["Authorization"] == "Bearer sekrit" and body["model"] == "audio-model"
    parts = body["messages"][-1]["content"]
    audio = [p["input_audio"] for p in parts if p["type"] == "input_audio"]
    assert len(audio) == 3 and all(a["format"] == "wav" for a in audio)
    pcm, rate = sf.read(io.BytesIO(base64.b64decode(audio[0]["data"])))
    assert rate == 16000 and len(pcm) == 16000


def test_llm_malformed_reply_is_asked_again_then_given_up():
    with FakeLLM([("content", "label: piano, confidence: high"), ("content", GOOD)]) as server:
        assert llm(server.url).label(windows())[0].label == "bright piano"
        assert len(server.requests) == 2
    with (
        FakeLLM([("content", '{"label": "piano", "confidence": ')]) as server,
        pytest.raises(LabelerError, match="malformed JSON") as err,
    ):
        llm(server.url).label(windows())
    assert err.value.retry


def test_llm_slow_reply_times_out_and_is_retried():
    with (
        FakeLLM([("slow", 1.5)]) as server,
        pytest.raises(LabelerError, match=r"no reply within 0\.3 s after 2 tries") as err,
    ):
        llm(server.url, timeout_s=0.3, retries=1).label(windows())
    assert err.value.retry and len(server.requests) == 2
    with FakeLLM([("slow", 1.0), ("content", GOOD)]) as server:
        assert llm(server.url, timeout_s=0.5, retries=1).label(windows())[0].label == "bright piano"


def test_llm_refusals_are_final_and_server_errors_are_retried():
    with (
        FakeLLM([("refusal", "I can't help with that.")]) as server,
        pytest.raises(LabelerError, match="refused") as err,
    ):
        llm(server.url).label(windows())
    assert not err.value.retry
    with (
        FakeLLM([("content", "Sorry, I cannot listen to audio.")]) as server,
        pytest.raises(LabelerError, match="refused"),
    ):
        llm(server.url).label(windows())
    with FakeLLM([("status", 503), ("garbage", "<html>oops</html>"), ("content", GOOD)]) as server:
        assert llm(server.url, retries=2).label(windows())[0].label == "bright piano"
        assert len(server.requests) == 3
    with FakeLLM([("status", 401)]) as server, pytest.raises(MgsteerError, match="answered 401"):
        llm(server.url).label(windows())


def test_llm_configuration_errors_are_one_line(monkeypatch):
    for name in ("MGSTEER_LLM_URL", "MGSTEER_LLM_MODEL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(MgsteerError, match="--llm-url"):
        LLMLabeler(LLMConfig())
    with pytest.raises(MgsteerError, match="--llm-model"):
        LLMLabeler(LLMConfig(url="http://127.0.0.1:1/v1"))
    with pytest.raises(MgsteerError, match="refused the connection"):
        llm("http://127.0.0.1:9/v1").label(windows())


def test_reply_parsing_helpers():
    assert parse_reply('Sure! {"label": "x"} hope that helps')["label"] == "x"
    with pytest.raises(ValueError):
        parse_reply("[1, 2]")
    assert [confidence_of(v) for v in (0.7, 3, 85, "high", None, -1)] == [0.7, 0.6, 0.85, 0.5, 0.5, 0.5]

"""Labels from a multimodal LLM behind an OpenAI-compatible chat endpoint that accepts audio.

The feature's top windows go up as base64 WAV `input_audio` parts (a local server or a hosted
API; URL, model and key from options or the environment). The model is asked for JSON with a
label, a confidence and a description. Servers misbehave: a timeout or a 5xx is retried with
backoff; a reply that is not the JSON asked for is asked again once; a refusal is recorded as
such. None of these stops a labeling run — only a wrong URL, key or model does (every
feature would fail the same way).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import numpy as np

from engine.errors import MgsteerError
from sae.labelers.base import Label, Labeler, LabelerError, WindowSet, resample

SYSTEM = "You are a music expert who names what a set of short audio excerpts have in common."
PROMPT = (
    "These {n} audio excerpts all strongly activate one feature of a music model. What musical concept do they "
    "share (instrument, genre, mood, playing technique, rhythm, harmony, texture)? Answer only with JSON: "
    '{{"label": "two to four words", "confidence": a number from 0 to 1, "description": "one sentence"}}.'
)
REFUSAL = re.compile(r"\b(can(?:no|')t|unable|not able|sorry|refuse)\b", re.IGNORECASE)


@dataclass(frozen=True)
class LLMConfig:
    url: str | None = None  # base URL, e.g. http://127.0.0.1:8000/v1 (env MGSTEER_LLM_URL)
    model: str | None = None  # env MGSTEER_LLM_MODEL
    api_key: str | None = None  # env MGSTEER_LLM_API_KEY, then OPENAI_API_KEY
    timeout_s: float = 60.0
    retries: int = 2
    max_clips: int = 4
    sample_rate: int = 16000

    def resolved(self) -> LLMConfig:
        env = os.environ
        return LLMConfig(
            url=self.url or env.get("MGSTEER_LLM_URL"),
            model=self.model or env.get("MGSTEER_LLM_MODEL"),
            api_key=self.api_key or env.get("MGSTEER_LLM_API_KEY") or env.get("OPENAI_API_KEY"),
            timeout_s=self.timeout_s,
            retries=self.retries,
            max_clips=self.max_clips,
            sample_rate=self.sample_rate,
        )


def wav_base64(audio: np.ndarray, sr: int) -> str:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1, 1), sr, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def parse_reply(content: str) -> dict:
    """The JSON object in a reply (code fences and chatter around it allowed); ValueError if none."""
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", content.strip())
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        match = re.search(r"\{.*\}", text, re.DOTALL)
        if match is None:
            raise ValueError("malformed JSON" if "{" in text else "no JSON object in the reply") from None
        try:
            data = json.loads(match.group(0))
        except json.JSONDecodeError as exc:
            raise ValueError(f"malformed JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ValueError("the reply's JSON is not an object")
    return data


def confidence_of(value) -> float:
    """0..1 from 0..1, 1..5 or 0..100 scales; 0.5 when missing or not a number."""
    try:
        c = float(value)
    except (TypeError, ValueError):
        return 0.5
    if not np.isfinite(c) or c < 0:
        return 0.5
    return c if c <= 1 else c / 5 if c <= 5 else min(c / 100, 1.0)


class LLMLabeler(Labeler):
    name = "llm"

    def __init__(self, config: LLMConfig | None = None) -> None:
        self.cfg = (config or LLMConfig()).resolved()
        if not self.cfg.url:
            raise MgsteerError("the llm labeler needs an endpoint: --llm-url URL or MGSTEER_LLM_URL")
        if not self.cfg.model:
            raise MgsteerError("the llm labeler needs a model name: --llm-model NAME or MGSTEER_LLM_MODEL")
        self.endpoint = self.cfg.url.rstrip("/") + "/chat/completions"

    def label(self, windows: WindowSet) -> list[Label]:
        clips = windows.top[: self.cfg.max_clips]
        if not clips:
            return []
        parts = [{"type": "text", "text": PROMPT.format(n=len(clips))}]
        for audio in clips:
            data = wav_base64(resample(audio, windows.sample_rate, self.cfg.sample_rate), self.cfg.sample_rate)
            parts.append({"type": "input_audio", "input_audio": {"data": data, "format": "wav"}})
        body = {
            "model": self.cfg.model,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": parts}],
            "temperature": 0,
        }
        problem = ""
        for _ in range(2):  # one more try when the reply is not the JSON asked for
            message = self._post(body)
            refusal = message.get("refusal")
            content = _text_of(message.get("content"))
            if refusal:
                raise LabelerError(f"refused: {str(refusal)[:200]}", retry=False)
            try:
                data = parse_reply(content)
            except ValueError as exc:
                if REFUSAL.search(content) and "{" not in content:
                    raise LabelerError(f"refused: {content[:200]}", retry=False) from exc
                problem = f"{exc}: {content[:120]!r}"
                continue
            label = data.get("label")
            if not isinstance(label, str) or not label.strip():
                problem = f"no label in the reply: {content[:120]!r}"
                continue
            evidence = {"confidence": data.get("confidence"), "description": str(data.get("description", ""))[:500]}
            return [
                Label(label.strip()[:80], confidence_of(data.get("confidence")), evidence | {"model": self.cfg.model})
            ]
        raise LabelerError(problem)

    def _post(self, body: dict) -> dict:
        payload = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.cfg.api_key:
            headers["Authorization"] = f"Bearer {self.cfg.api_key}"
        last = ""
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                time.sleep(min(2.0**attempt, 30.0) * 0.25)
            request = urllib.request.Request(self.endpoint, data=payload, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.cfg.timeout_s) as response:
                    reply = json.loads(response.read().decode("utf-8", "replace"))
                return reply["choices"][0]["message"]
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403, 404):
                    raise MgsteerError(
                        f"LLM endpoint {self.endpoint} answered {exc.code} {exc.reason}: check the URL, key and model"
                    ) from exc
                last = f"HTTP {exc.code}"
            except TimeoutError:
                last = f"no reply within {self.cfg.timeout_s:g} s"
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, ConnectionRefusedError):
                    raise MgsteerError(f"LLM endpoint {self.endpoint} refused the connection") from exc
                last = f"{exc.reason}"
            except (json.JSONDecodeError, KeyError, IndexError, TypeError):
                last = "the server's response is not a chat completion"
        raise LabelerError(f"{last} after {self.cfg.retries + 1} tries")


def _text_of(content) -> str:
    """Message content as text: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""

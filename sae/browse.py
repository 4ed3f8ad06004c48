"""`mgsteer browse`: one static HTML page to search and listen to the feature catalog.

No server: the page is a single file with the catalog embedded as JSON, plus a folder beside
it (`<name>_files/`) holding the example audio and spectrogram thumbnails, so the pair can be
copied anywhere or opened straight from disk. Thumbnails are written here as tiny PNGs (no
plotting library); histograms are drawn by the page as SVG.
"""

from __future__ import annotations

import itertools
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np

from engine.errors import MgsteerError
from sae.catalog import load_catalog

THUMB_W, THUMB_H = 96, 40


def png_bytes(gray: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG of a 2-D uint8 array (rows top to bottom)."""
    height, width = gray.shape
    raw = b"".join(b"\x00" + row.tobytes() for row in np.ascontiguousarray(gray, dtype=np.uint8))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def spectrogram_thumbnail(audio: np.ndarray, sr: int) -> np.ndarray:
    """Log-magnitude spectrogram, log-frequency rows (low at the bottom), `THUMB_H × THUMB_W` uint8."""
    from scipy.signal import stft

    if len(audio) < 512:
        return np.zeros((THUMB_H, THUMB_W), np.uint8)
    freqs, _, spec = stft(audio, sr, nperseg=1024, noverlap=768)
    mag = np.log10(np.abs(spec) + 1e-6)
    edges = np.geomspace(60, sr / 2, THUMB_H + 1)
    rows = []
    for lo, hi in itertools.pairwise(edges):  # low bands narrower than a bin take the nearest bin
        band = (freqs >= lo) & (freqs < hi)
        rows.append(mag[band].max(0) if band.any() else mag[np.abs(freqs - np.sqrt(lo * hi)).argmin()])
    rows = np.stack(rows)
    cols = np.linspace(0, rows.shape[1] - 1, THUMB_W).round().astype(int)
    img = rows[::-1][:, cols]
    lo, hi = np.percentile(img, 5), img.max()
    return (255 * np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)).astype(np.uint8)


def write_browser(sae_dir: str | Path, out: str | Path) -> Path:
    """Write the page and its `_files` folder; returns the page's path."""
    import soundfile as sf

    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise MgsteerError(f"--out '{out}' should be an .html file")
    sae_dir = Path(sae_dir)
    catalog = load_catalog(sae_dir)
    assets = out.parent / f"{out.stem}_files"
    assets.mkdir(parents=True, exist_ok=True)

    def asset(rel: str) -> dict:
        """Copy one snippet next to the page, with its thumbnail; paths relative to the page."""
        src = sae_dir / rel
        if not src.is_file():
            return {"audio": None, "thumb": None}
        flat = rel.replace("/", "_")
        shutil.copyfile(src, assets / flat)
        audio, sr = sf.read(str(src), dtype="float32", always_2d=True)
        thumb = Path(flat).with_suffix(".png").name
        (assets / thumb).write_bytes(png_bytes(spectrogram_thumbnail(audio.mean(1), sr)))
        return {"audio": f"{assets.name}/{flat}", "thumb": f"{assets.name}/{thumb}"}

    for record in catalog["features"]:
        for example in record.get("examples", []):
            example |= asset(example["audio"])
    for window in catalog.get("random_windows", []):
        window |= asset(window["audio"])
    data = json.dumps(catalog).replace("</", "<\\/")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(PAGE.replace("__DATA__", data))
    return out


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mgsteer feature browser</title>
<link rel="icon" href="data:,">
<style>
body{font-family:system-ui,sans-serif;margin:0;background:#f6f6f4;color:#222}
header{position:sticky;top:0;background:#222;color:#eee;padding:10px 16px;display:flex;gap:16px;align-items:center}
header input{flex:1;max-width:420px;padding:6px;font-size:15px}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:12px;padding:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px}
.card h2{margin:0 0 6px;font-size:16px}.meta{color:#666;font-size:12px}
.labels{margin:6px 0;font-size:13px}.labels b{display:inline-block;width:86px;color:#555}
.tag{display:inline-block;background:#eef;border-radius:3px;padding:1px 5px;margin:1px}
.val{font-size:12px;color:#555}.ex{display:flex;align-items:center;gap:6px;margin:3px 0;font-size:12px}
.ex img{width:96px;height:40px;image-rendering:pixelated;border:1px solid #ccc}.ex audio{height:28px;width:180px}
.err{color:#a00;font-size:12px}.note{margin:8px 16px 0;font-size:12px;color:#555}
</style></head><body>
<header><strong>mgsteer features</strong><input id="q" placeholder="search labels, e.g. piano, C major, ~120 BPM"
 aria-label="search"><span id="count"></span></header>
<p class="note">A label's number is its labeler's contrast between the feature's top windows and random
 ones (world: the value's mean posterior on the top windows minus on random ones, so 0.8 is a
 value always there against one random window in five; hover a label for its evidence). The
 <i>label AUROC</i> tests the best label on windows its labeler never heard.</p>
<main id="list"></main>
<script type="application/json" id="catalog">__DATA__</script>
<script>
"use strict";
const catalog = JSON.parse(document.getElementById("catalog").textContent);
const $ = id => document.getElementById(id);
const list = $("list"), q = $("q"), count = $("count");
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function histogram(h) {
  const ns = "http://www.w3.org/2000/svg", svg = document.createElementNS(ns, "svg");
  const n = h.counts.length, top = Math.max(1, ...h.counts.map(c => Math.log1p(c)));
  svg.setAttribute("width", 200); svg.setAttribute("height", 40); svg.setAttribute("viewBox", "0 0 200 40");
  h.counts.forEach((c, i) => {
    const r = document.createElementNS(ns, "rect"), height = 38 * Math.log1p(c) / top;
    r.setAttribute("x", i * 200 / n); r.setAttribute("width", 200 / n - 1);
    r.setAttribute("y", 40 - height); r.setAttribute("height", height); r.setAttribute("fill", "#6a8");
    svg.appendChild(r);
  });
  const t = document.createElementNS(ns, "title");
  t.textContent = "activation histogram (log counts), 0 to " + h.max.toFixed(3);
  svg.appendChild(t);
  return svg;
}
function card(f) {
  const c = el("div", {class: "card", "data-id": f.id});
  c.appendChild(el("h2", {}, "feature " + f.id));
  const rate = f.firing_rate_clip == null ? "" : ", on " + (100 * f.firing_rate_clip).toFixed(1) + " % of clips";
  c.appendChild(el("div", {class: "meta"}, "fires on " + (100 * f.firing_rate).toFixed(2) + " % of frames" + rate +
    ", β = " + f.beta.toFixed(3)));
  const labels = el("div", {class: "labels"});
  for (const [name, items] of Object.entries(f.labels || {})) {
    const row = el("div"); row.appendChild(el("b", {}, name));
    if (!items.length) row.appendChild(el("span", {class: "val"}, "(nothing stands out)"));
    for (const l of items) row.appendChild(el("span", {class: "tag", title: JSON.stringify(l.evidence)},
      l.label + " " + Number(l.score.toPrecision(2))));
    const v = (f.validation || {})[name];
    if (v && v.auroc != null) row.appendChild(el("span", {class: "val"},
      " label AUROC " + v.auroc.toFixed(2) + " by " + v.scorer + (v.independent ? "" : " (held-out only)")));
    labels.appendChild(row);
  }
  for (const [name, e] of Object.entries(f.errors || {}))
    labels.appendChild(el("div", {class: "err"}, name + ": " + e.message));
  c.appendChild(labels);
  if (f.histogram) c.appendChild(histogram(f.histogram));
  for (const x of f.examples || []) {
    const row = el("div", {class: "ex"});
    if (x.thumb) row.appendChild(el("img", {src: x.thumb, alt: "spectrogram"}));
    if (x.audio) row.appendChild(el("audio", {controls: "", preload: "none", src: x.audio}));
    row.appendChild(el("span", {}, x.clip + " @ " + x.peak_s.toFixed(2) + " s (" + x.activation.toFixed(3) + ")"));
    c.appendChild(row);
  }
  c.dataset.text = [f.id, ...Object.values(f.labels || {}).flat().map(l => l.label)].join(" ").toLowerCase();
  return c;
}
const cards = catalog.features.map(card);
cards.forEach(c => list.appendChild(c));
function filter() {
  const words = q.value.toLowerCase().split(/\\s+/).filter(Boolean);
  let shown = 0;
  for (const c of cards) {
    const hit = words.every(w => c.dataset.text.includes(w));
    c.style.display = hit ? "" : "none"; shown += hit;
  }
  count.textContent = shown + " / " + cards.length + " features";
  document.body.dataset.shown = String(shown);
}
q.addEventListener("input", () => { history.replaceState(null, "", "#q=" + encodeURIComponent(q.value)); filter(); });
if (location.hash.startsWith("#q=")) q.value = decodeURIComponent(location.hash.slice(3));  // shareable searches
filter();
document.body.dataset.rendered = String(cards.length);
</script></body></html>
"""

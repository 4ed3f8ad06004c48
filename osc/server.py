"""OSC control surface: UDP in, parameter bus writes, feedback out.

Why a socket loop of our own rather than python-osc's server classes: every datagram,
however malformed, must be caught, counted and answered with `/mgsteer/error`, and a flood
must not reach the bus message by message. So the loop drains whatever is queued on the
socket, keeps the latest message per address (coalescing), and only then applies them.
Why it cannot die on a message: every handler's failure, expected or not, becomes one
`/mgsteer/error` reply and a counter, and the loop itself survives anything a datagram or a
send can raise. The address space, and what a network-exposed server can and cannot do, are
in docs/OSC.md.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket, ParseError

from engine import limits
from engine.errors import MgsteerError
from engine.params import Feedback, ParameterBus
from engine.presets import PresetFolder
from osc.wire import Malformed, check_datagram

PREFIX = "/mgsteer"
MAX_STRING = 1000
MAX_DATAGRAM = 8192  # the largest datagram taken; a larger one is refused whole, and counted
RECEIVE_BYTES = 65_536  # more than any UDP datagram: the socket never cuts one short unseen
INDEX = r"(0|[1-9][0-9]{0,8})"  # knob and feature indices: ASCII decimals, one spelling each


@dataclass
class OscStats:
    received: int = 0
    applied: int = 0
    coalesced: int = 0
    rejected: int = 0  # every message answered with /mgsteer/error (the two below included)
    malformed: int = 0  # datagrams that were not OSC (or larger than MAX_DATAGRAM)
    failed: int = 0  # messages whose handler failed unexpectedly (a bug, answered and survived)


class OscServer:
    """Serves the bus on `host:port` (127.0.0.1:9000 by default: only this machine)."""

    def __init__(
        self,
        bus: ParameterBus,
        host: str = "127.0.0.1",
        port: int = 9000,
        status: Callable[[], dict] | None = None,
        presets: Callable[[str, str], str] | None = None,
    ) -> None:
        self.bus, self.status_fn, self.presets = bus, status, presets
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            raise MgsteerError(f"cannot serve OSC on {host}:{port} ({exc.strerror}); choose --osc-port") from exc
        self.address = self.sock.getsockname()
        self.sock.settimeout(0.1)
        self.stats = OscStats()
        self.subscribers = Subscribers()
        self._out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._running = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsubscribe = bus.subscribe(self._feedback)

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._running.set()
        self._thread = threading.Thread(target=self._serve, name="mgsteer-osc", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._running.clear()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._unsubscribe()
        self.subscribers.close()
        self.sock.close()
        self._out.close()

    # ---- receive ------------------------------------------------------------------------------
    def _serve(self) -> None:
        while self._running.is_set():
            try:
                first = self.sock.recvfrom(RECEIVE_BYTES)
            except TimeoutError:
                continue
            except OSError:
                if self.sock.fileno() < 0:  # closed by stop()
                    return
                continue  # e.g. ICMP port-unreachable from a vanished subscriber
            try:
                self._serve_batch(first)
            except Exception as exc:  # the server outlives its own bugs; the count shows them
                self.stats.failed += 1
                print(f"mgsteer: OSC batch failed: {type(exc).__name__}: {exc}")

    def _serve_batch(self, first) -> None:
        # Well-formed value updates coalesce per address (a flood collapses to its latest
        # value, in the place of its first); everything else, bad input included, is applied
        # one by one in order, so every rejection is answered and counted.
        pending: dict[object, tuple[OscMessage, tuple[str, int]]] = {}
        for data, sender in self._drain(first):
            self.stats.received += 1
            self.subscribers.heard(_client(sender))
            for message in self._parse(data, sender):
                key = message.address if _is_value_update(message) else object()
                if key in pending:
                    self.stats.coalesced += 1
                pending[key] = (message, sender)
        for message, sender in pending.values():
            self._apply(message, sender)

    def _drain(self, first, limit: int = 10_000):
        """The datagram just received and whatever else is already queued (bounded)."""
        yield first
        self.sock.setblocking(False)
        try:
            for _ in range(limit):
                yield self.sock.recvfrom(RECEIVE_BYTES)
        except (BlockingIOError, OSError):
            pass
        finally:
            self.sock.settimeout(0.1)

    def _parse(self, data: bytes, sender) -> list[OscMessage]:
        try:
            if len(data) > MAX_DATAGRAM:
                raise Malformed(f"{len(data)} bytes; the limit is {MAX_DATAGRAM}: send smaller bundles")
            check_datagram(data)
            return [m.message for m in OscPacket(data).messages if isinstance(m.message, OscMessage)]
        except Malformed as exc:
            reason = str(exc)
        except Exception as exc:  # python-osc raises many kinds on hostile bytes (bundles too)
            reason = "ParseError" if isinstance(exc, ParseError) else type(exc).__name__
        self.stats.malformed += 1
        self._reject(sender, f"unreadable OSC datagram ({reason})")
        return []

    # ---- dispatch -----------------------------------------------------------------------------
    def _apply(self, message: OscMessage, sender) -> None:
        address, args = message.address, list(message.params)
        try:
            self._route(address, args, sender)
            self.stats.applied += 1
        except MgsteerError as exc:
            self._reject(sender, f"{address}: {exc}")
        except Exception as exc:  # a bug must cost one message, never the server
            self.stats.failed += 1
            self._reject(sender, f"{address}: internal error ({type(exc).__name__}: {exc})")

    def _route(self, address: str, args: list, sender) -> None:
        if not address.startswith(PREFIX + "/"):
            raise MgsteerError("unknown address")
        path = address[len(PREFIX) :]
        if m := re.fullmatch(rf"/knob/{INDEX}", path):
            _arity(args, 1, 1)
            value = _number(args, 0)
            index = int(m[1])
            applied = self.bus.set_knob(index, value)
            if applied != value:
                self._reject(sender, f"{address}: {value} is outside 0..1, clamped to {applied}")
            elif not self.bus.snapshot().knobs[index].features:  # set, but it moves nothing: say so
                hint = f"{PREFIX}/knob/{index}/assign FEATURE gives it one (the SAE's, from --sae or a preset)"
                self.send(sender, f"{PREFIX}/error", f"{address}: knob {index} drives no feature yet: {hint}")
        elif m := re.fullmatch(rf"/knob/{INDEX}/assign", path):
            _arity(args, 1, 2)
            feature = _integer(args, 0)
            weight = _number(args, 1) if len(args) > 1 else 1.0
            index = int(m[1])
            knobs = self.bus.snapshot().knobs
            if index >= len(knobs):
                raise MgsteerError(f"unknown knob {index}")
            features = [(f, w) for f, w in knobs[index].features if f != feature] + [(feature, weight)]
            self.bus.configure_knob(index, features=features)
        elif m := re.fullmatch(rf"/knob/{INDEX}/label", path):
            _arity(args, 1, 1)
            self.bus.configure_knob(int(m[1]), label=_string(args, 0))
        elif m := re.fullmatch(rf"/feature/{INDEX}", path):
            _arity(args, 1, 1)
            value = _number(args, 0)
            applied = self.bus.set_feature(int(m[1]), value)
            if applied != value:
                self._reject(sender, f"{address}: {value:g} is outside ±{limits.MAX_ALPHA:g}, clamped to {applied:g}")
        elif path == "/prompt":
            _arity(args, 1, 1)
            self.bus.set_prompt(_string(args, 0))
        elif path in ("/transport/play", "/transport/stop", "/transport/reset"):
            _arity(args, 0, 1)
            {"play": self.bus.play, "stop": self.bus.stop, "reset": self.bus.reset}[path.rsplit("/", 1)[1]]()
        elif path == "/melody/follow":
            _arity(args, 0, 1)
            self.bus.follow_melody()
        elif path in ("/preset/load", "/preset/save"):
            if self.presets is None:
                raise MgsteerError("presets are not available in this host")
            _arity(args, 1, 1)
            done = self.presets(path.rsplit("/", 1)[1], _string(args, 0))
            self.send(sender, f"{PREFIX}{path}", done)
        elif path == "/status":
            _arity(args, 0, 0)
            self.send(sender, f"{PREFIX}/status", *self._status_values())
        elif path == "/subscribe":
            _arity(args, 0, 2)
            target = _target(args) if args else sender
            self.subscribers.add(target, _client(sender))
            self.send(target, f"{PREFIX}/subscribed", 1)
        elif path == "/unsubscribe":
            _arity(args, 0, 2)
            target = _target(args) if args else sender
            self.send(target, f"{PREFIX}/subscribed", int(not self.subscribers.remove(target)))
        else:
            raise MgsteerError("unknown address")

    def _status_values(self) -> list:
        status = self.status_fn() if self.status_fn else {}
        stats = self.stats
        return [f"{k}={v}" for k, v in status.items()] + [
            f"osc_rejected={stats.rejected}",
            f"osc_malformed={stats.malformed}",
            f"osc_failed={stats.failed}",
        ]

    # ---- send ---------------------------------------------------------------------------------
    def send(self, target, address: str, *args) -> None:
        # A vanished client, or an address the system refuses, must not stop the server.
        with contextlib.suppress(OSError, OverflowError, ValueError, TypeError):
            self._out.sendto(_build(address, *args), target)

    def _reject(self, sender, why: str) -> None:
        self.stats.rejected += 1
        self.send(sender, f"{PREFIX}/error", why[:MAX_STRING])

    def _feedback(self, feedback: Feedback) -> None:
        """Bus feedback (≤ 30 Hz) → every subscriber."""
        messages = []
        if feedback.knobs:
            for i, knob in enumerate(feedback.knobs):
                messages += [_build(f"{PREFIX}/knob/{i}", knob.value), _build(f"{PREFIX}/knob/{i}/label", knob.label)]
        if feedback.meters:
            messages += [_build(f"{PREFIX}/meter/{f}", float(v)) for f, v in feedback.meters.items()]
        if feedback.prompt:
            messages.append(_build(f"{PREFIX}/prompt", feedback.prompt))
        if feedback.status:
            messages.append(_build(f"{PREFIX}/status", *(f"{k}={v}" for k, v in feedback.status.items())))
        if messages:
            self.subscribers.send_all(messages)


VALUE_ADDRESS = re.compile(PREFIX + rf"/(knob|feature)/{INDEX}")


def _is_value_update(message: OscMessage) -> bool:
    """A knob or feature value with exactly one finite number: safe to keep only the latest."""
    params = message.params
    return (
        len(params) == 1
        and isinstance(params[0], (int, float))
        and not isinstance(params[0], bool)
        and math.isfinite(params[0])
        and (0.0 <= params[0] <= 1.0 or "/feature/" in message.address)
        and VALUE_ADDRESS.fullmatch(message.address) is not None
    )


MAX_SUBSCRIBERS = 16
MAX_PER_CLIENT = 4  # subscriptions one client address may hold: no one client fills the table
SILENT_S = 60.0  # a full table makes room by dropping a subscriber whose client was silent this long


def _client(sender: tuple[str, int]) -> str:
    """Who holds subscriptions: a remote machine by its address (it can send from any port);
    on this machine, each program by its port (a DAW and a bridge share 127.0.0.1)."""
    return f"{sender[0]}:{sender[1]}" if ipaddress.ip_address(sender[0]).is_loopback else sender[0]


def _build(address: str, *args) -> bytes:
    builder = OscMessageBuilder(address=address)
    for arg in args:
        builder.add_arg(arg)
    return builder.build().dgram


class Subscribers:
    """Feedback targets, each with a UDP socket connected to it.

    Why connected sockets: the system reports a closed port (ICMP port unreachable) on the
    next send of a connected socket only, so a controller that went away is pruned at once
    instead of holding a place forever. The table is bounded (MAX_SUBSCRIBERS), one client
    address holds at most MAX_PER_CLIENT places, and when it is full a new subscriber takes the
    place of one whose client has sent nothing for SILENT_S (a live surface sends as it is
    played; `/mgsteer/unsubscribe` frees a place at once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._targets: dict[tuple[str, int], tuple[socket.socket, str]] = {}  # target → (socket, client)
        self._heard: dict[str, float] = {}  # client address → when it last sent

    def __len__(self) -> int:
        return len(self._targets)

    def __contains__(self, target) -> bool:
        return target in self._targets

    def heard(self, client: str) -> None:
        self._heard[client] = time.monotonic()
        if len(self._heard) > 4 * MAX_SUBSCRIBERS:  # only clients that hold places need remembering
            with self._lock:
                holders = {c for _, c in self._targets.values()}
            self._heard = {c: t for c, t in self._heard.items() if c in holders or c == client}

    def add(self, target: tuple[str, int], client: str) -> None:
        with self._lock:
            if target in self._targets:
                return
            if sum(c == client for _, c in self._targets.values()) >= MAX_PER_CLIENT:
                raise MgsteerError(f"one client holds at most {MAX_PER_CLIENT} subscriptions; unsubscribe one first")
            if len(self._targets) >= MAX_SUBSCRIBERS and not self._evict_silent():
                raise MgsteerError(f"at most {MAX_SUBSCRIBERS} subscribers, all active; try again later")
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.connect(target)
            except OSError as exc:
                sock.close()
                raise MgsteerError(f"cannot send to {target[0]}:{target[1]} ({exc.strerror})") from None
            self._targets[target] = (sock, client)

    def _evict_silent(self) -> bool:
        now = time.monotonic()
        silent = [(self._heard.get(c, 0.0), t) for t, (_, c) in self._targets.items()]
        when, target = min(silent)
        if now - when < SILENT_S:
            return False
        self._targets.pop(target)[0].close()
        return True

    def remove(self, target: tuple[str, int]) -> bool:
        """False when `target` was not subscribed."""
        with self._lock:
            entry = self._targets.pop(target, None)
        if entry is not None:
            entry[0].close()
        return entry is not None

    def send_all(self, datagrams: list[bytes]) -> None:
        """Send to every subscriber; one whose port is closed is dropped."""
        with self._lock:
            targets = list(self._targets.items())
        for target, (sock, _) in targets:
            try:
                for data in datagrams:
                    sock.send(data)
            except ConnectionRefusedError:
                self.remove(target)
            except OSError:
                continue  # a full buffer or a route down: try again next time

    def close(self) -> None:
        with self._lock:
            for sock, _ in self._targets.values():
                sock.close()
            self._targets.clear()


def _target(args: list) -> tuple[str, int]:
    """A feedback target: an IP address (no host names: resolving one could block the server)
    and a port 1..65535."""
    host = _string(args, 0)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise MgsteerError(f"subscribe needs an IP address such as 127.0.0.1, got {host!r}"[:200]) from None
    if ip.version != 4:
        raise MgsteerError("subscribe takes an IPv4 address")
    if len(args) < 2:
        raise MgsteerError("subscribe takes an address and a port, or nothing (the sender)")
    return str(ip), limits.integer(_integer(args, 1), "port", 1, limits.MAX_PORT)


def _arity(args: list, low: int, high: int) -> None:
    if not low <= len(args) <= high:
        want = str(low) if low == high else f"{low}..{high}"
        raise MgsteerError(f"takes {want} argument(s), got {len(args)}")


def _number(args: list, i: int) -> float:
    value = args[i] if i < len(args) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MgsteerError(f"argument {i + 1} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise MgsteerError(f"argument {i + 1} must be finite, got {value}")
    return float(value)


def _integer(args: list, i: int) -> int:
    value = args[i] if i < len(args) else None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MgsteerError(f"argument {i + 1} must be an integer, got {type(value).__name__}")
    return value


def _string(args: list, i: int) -> str:
    if i >= len(args) or not isinstance(args[i], str):
        raise MgsteerError(f"argument {i + 1} must be a string, got {args!r}"[:200])
    if len(args[i]) > MAX_STRING:
        raise MgsteerError(f"string longer than {MAX_STRING} characters")
    return args[i]


def preset_handler(bus: ParameterBus, model: str, sae: str | None, feature_count: int | None, folder: PresetFolder):
    """`/mgsteer/preset/load|save NAME` for a host, confined to `folder`: load applies to the
    bus, save captures it."""
    from engine.presets import apply_preset, capture_preset

    def handle(action: str, name: str) -> str:
        if action == "load":
            preset = folder.load(name, feature_count, len(bus.snapshot().knobs))
            apply_preset(preset, bus)
            return preset.name
        stem = folder.path(name).stem
        return folder.save(capture_preset(bus, stem, model, sae), name).name

    return handle

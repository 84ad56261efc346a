"""OSC control over UDP (python-osc for parsing and building messages).

Address space (values in the parameter's unit unless the address ends in
``/norm``, which takes 0..1 like TouchOSC's default fader range):

- ``/rtengine/<stage>/<param>`` and ``…/norm``;
- list parameters: ``/rtengine/<stage>/<param>/<i>`` and ``…/<i>/norm``;
- patch aliases (``/1/fader1: output.gain``) take normalised 0..1 values;
- ``/rtengine/panic`` resets every processing stage (silence, then resume);
- ``/rtengine/patch/save <path>`` writes the current state as a patch, atomically.

Values outside the range are clamped. Every applied value is echoed back to
the sender (or to ``reply_port`` on the sender's host) on the address it came
in on, at most 30 times a second per address, latest value wins. Anything
malformed — undecodable datagrams, unknown addresses, wrong argument count or
type — is counted in ``stats`` and otherwise ignored: the receive loop parses
each datagram itself and never lets an exception out.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass

from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

from ..errors import UserError
from .params import Param

PREFIX = "/rtengine"
ECHO_HZ = 30.0


@dataclass
class Address:
    address: str
    stage: str
    param: Param
    index: int | None
    norm: bool
    alias: bool = False

    @property
    def target(self) -> str:
        return f"{self.stage}.{self.param.name}" + ("" if self.index is None else f"[{self.index}]")


def address_table(engine, aliases: dict | None = None) -> dict[str, Address]:
    """Every OSC address of an engine's parameters (and the patch aliases)."""
    table: dict[str, Address] = {}
    for st in engine.chain:
        for p in st.params.values():
            base = f"{PREFIX}/{st.name}/{p.name}"
            if p.size is None:
                table[base] = Address(base, st.name, p, None, False)
                table[base + "/norm"] = Address(base + "/norm", st.name, p, None, True)
            else:
                for i in range(p.size):
                    a = f"{base}/{i}"
                    table[a] = Address(a, st.name, p, i, False)
                    table[a + "/norm"] = Address(a + "/norm", st.name, p, i, True)
    for a, target in (aliases or {}).items():
        p, idx = engine.param(target)
        stage = target.split(".")[0]
        table[a] = Address(a, stage, p, idx if idx is not None else (0 if p.size else None),
                           True, alias=True)
    return table


def parse_hostport(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``"HOST:PORT"``, ``":PORT"`` or ``"PORT"`` → (host, port)."""
    host, _, port = str(text).rpartition(":")
    try:
        p = int(port)
        if not 0 <= p <= 65535:
            raise ValueError
    except ValueError:
        raise UserError(f"--osc {text!r}: expected HOST:PORT with a port in 0..65535") from None
    return host or default_host, p


class OSCServer:
    """UDP OSC server driving an engine's parameters.

    Args:
        engine: the running :class:`~rtengine.engine.Engine`.
        host, port: where to listen (port 0 picks a free port: see ``.port``).
        aliases: patch aliases ``{address: "stage.param[i]"}``.
        reply_port: echo to this port on the sender's host instead of the
            sender's own port.
        on_save: ``callable(path) -> Path`` for ``/rtengine/patch/save``.
    """

    def __init__(self, engine, host: str = "127.0.0.1", port: int = 9000,
                 aliases: dict | None = None, reply_port: int | None = None,
                 on_save=None, log_size: int = 1000):
        self.engine = engine
        self.table = address_table(engine, aliases)
        self.reply_port = reply_port
        self.on_save = on_save
        self.stats = Counter()
        self.malformed_kinds = Counter()
        self.log: list[tuple[float, str, float]] = []
        self._log_size = log_size
        self._pending: dict[tuple, tuple] = {}
        self._last_sent: dict[tuple, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind((host, port))
        except OSError as e:
            self.sock.close()
            raise UserError(f"cannot listen for OSC on {host}:{port}: {e.strerror or e}") from None
        self.sock.settimeout(0.1)
        self.host, self.port = self.sock.getsockname()[:2]
        self._threads: list[threading.Thread] = []

    @property
    def malformed(self) -> int:
        return self.stats["malformed"]

    def start(self) -> "OSCServer":
        for fn, name in ((self._recv_loop, "osc-recv"), (self._echo_loop, "osc-echo")):
            t = threading.Thread(target=fn, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=1.0)
        self.sock.close()

    # -- receiving -----------------------------------------------------------
    def _recv_loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, sender = self.sock.recvfrom(65536)
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            try:
                self.handle_datagram(data, sender)
            except Exception:  # never let one datagram stop the server
                self._bad("internal")

    def _bad(self, kind: str) -> None:
        self.stats["malformed"] += 1
        self.malformed_kinds[kind] += 1

    def handle_datagram(self, data: bytes, sender=None) -> None:
        self.stats["datagrams"] += 1
        try:
            packet = OscPacket(data)
            messages = [m.message for m in packet.messages]
        except Exception:
            self._bad("undecodable")
            return
        for m in messages:
            self.handle_message(m.address, list(m.params), sender)

    def handle_message(self, address: str, args: list, sender=None) -> None:
        self.stats["messages"] += 1
        if address == f"{PREFIX}/panic":
            self.engine.panic()
            self.stats["panic"] += 1
            return
        if address == f"{PREFIX}/patch/save":
            if len(args) != 1 or not isinstance(args[0], str) or not args[0]:
                self._bad("bad arguments")
                return
            if self.on_save is None:
                self._bad("save unavailable")
                return
            try:
                saved = self.on_save(args[0])
                self.stats["saved"] += 1
                self._queue(sender, f"{PREFIX}/patch/saved", str(saved))
            except (UserError, OSError):
                self._bad("save failed")
            return
        entry = self.table.get(address)
        if entry is None:
            self._bad("unknown address")
            return
        if len(args) != 1:
            self._bad("wrong argument count")
            return
        v = args[0]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self._bad("wrong type")
            return
        v = float(v)
        if v != v:  # NaN
            self._bad("wrong type")
            return
        p = entry.param
        value = p.from_norm(v) if entry.norm else p.clamp(v)
        p.set(value, entry.index)
        self.stats["applied"] += 1
        if len(self.log) < self._log_size:
            self.log.append((time.monotonic(), address, value))
        echo = p.to_norm(value) if entry.norm else value
        self._queue(sender, address, echo)

    # -- feedback --------------------------------------------------------------
    def _queue(self, sender, address: str, value) -> None:
        if sender is None:
            return
        host, port = sender[0], self.reply_port or sender[1]
        with self._lock:
            self._pending[(host, port, address)] = value

    def _echo_loop(self) -> None:
        interval = 1.0 / ECHO_HZ
        while not self._stop.wait(0.004):
            now = time.monotonic()
            due = []
            with self._lock:
                for key in list(self._pending):
                    if now - self._last_sent.get(key, -1.0) >= interval:
                        due.append((key, self._pending.pop(key)))
                        self._last_sent[key] = now
            for (host, port, address), value in due:
                b = OscMessageBuilder(address=address)
                b.add_arg(float(value) if not isinstance(value, str) else value)
                try:
                    self.sock.sendto(b.build().dgram, (host, port))
                    self.stats["echoed"] += 1
                except OSError:
                    self.stats["echo_failed"] += 1

    def summary(self) -> dict:
        return {"datagrams": self.stats["datagrams"], "messages": self.stats["messages"],
                "applied": self.stats["applied"], "malformed": self.stats["malformed"],
                "malformed_kinds": dict(self.malformed_kinds), "echoed": self.stats["echoed"],
                "panic": self.stats["panic"], "saved": self.stats["saved"]}

"""Engine sub-commands: render, play, devices, params, touchosc.

``add_engine_commands(subparsers)`` registers them on the ``rtengine`` parser.
Handlers import what they need when they run and raise
:class:`rtengine.errors.UserError` for anything the user can fix.
"""

from __future__ import annotations

import argparse
import sys

from .errors import UserError
from .cli import positive_int


def _parse_set(items) -> list[tuple[str, float]]:
    out = []
    for item in items or []:
        path, eq, value = item.partition("=")
        if not eq or not path.strip():
            raise UserError(f"--set {item!r}: expected stage.param=value (e.g. output.gain=-6)")
        try:
            out.append((path.strip(), float(value)))
        except ValueError:
            raise UserError(f"--set {item!r}: {value!r} is not a number") from None
    return out


def _load(args):
    from .control.patch import default_patch_path, load_patch

    path = args.patch if getattr(args, "patch", None) else default_patch_path()
    return load_patch(path)


def _engine(args, patch):
    from .control.patch import build_engine

    return build_engine(patch, seed=getattr(args, "seed", None), overrides=_parse_set(getattr(args, "set", None)))


def cmd_render(args) -> int:
    from .engine.render import default_length, plot_spectrogram, render
    from .io import write_audio

    patch = _load(args)
    engine = _engine(args, patch)
    if engine.source.live_only:
        raise UserError(f"{patch.path}: the source ({engine.source.describe()}) needs a sound "
                        f"card; use 'rtengine play'")
    if getattr(engine.source, "options", {}).get("stdin"):
        engine.source.read_stdin(block_until_eof=True)
    engine.prepare(max(1, min(64, -(-args.block_size // engine.cfg.hop))))
    n = default_length(engine, args.duration)
    import time
    t0 = time.perf_counter()
    audio = render(engine, n, args.block_size, progress=not args.quiet)
    dt = time.perf_counter() - t0
    write_audio(args.output, audio, engine.cfg.sample_rate)
    if args.plot:
        plot_spectrogram(audio, engine.cfg.sample_rate, args.plot, title=f"{patch.path.name}")
    if not args.quiet:
        secs = n / engine.cfg.sample_rate
        print(f"{args.output}: {secs:.2f} s rendered in {dt:.2f} s "
              f"({secs / max(dt, 1e-9):.0f}x real time), latency {engine.latency_ms:.1f} ms, "
              f"peak {20 * __import__('math').log10(max(float(abs(audio).max()), 1e-12)):.1f} dBFS",
              file=sys.stderr)
    return 0


def _device(text):
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def cmd_play(args) -> int:
    from .control.osc import OSCServer, parse_hostport
    from .control.oscquery import OSCQueryServer
    from .control.patch import save_patch
    from .engine.live import LivePlayer, stats_line, write_stats

    patch = _load(args)
    engine = _engine(args, patch)
    if getattr(engine.source, "options", {}).get("stdin"):
        engine.source.read_stdin()
    host, port = patch.osc_host, patch.osc_port
    if args.osc:
        host, port = parse_hostport(args.osc, host)
    osc = query = None
    if not args.no_osc:
        osc = OSCServer(engine, host, port, patch.aliases, reply_port=patch.reply_port,
                        on_save=lambda p: save_patch(patch, engine, p)).start()
        qport = args.query_port if args.query_port is not None else patch.query_port
        if qport is None:
            qport = osc.port + 1 if osc.port else 0
        if qport >= 0:
            query = OSCQueryServer(engine, host, qport, osc.port, patch.aliases).start()
        print(f"OSC on {osc.host}:{osc.port}" +
              (f", OSCQuery on http://{host}:{query.port}/" if query else ""), file=sys.stderr)
    player = LivePlayer(engine, device=_device(args.device), block_size=args.block_size,
                        latency_ms=args.latency, duration=args.duration, record=args.record,
                        status=not args.quiet, osc=osc)
    try:
        stats = player.run()
    finally:
        if osc:
            osc.stop()
        if query:
            query.stop()
    if args.stats:
        write_stats(stats, args.stats)
    print(stats_line(stats), file=sys.stderr)
    if stats.get("stalled"):
        print(f"rtengine: error: the audio device stopped calling back after {stats['seconds']:.1f} s "
              f"(its server or driver stopped?); the stats and the recording are written", file=sys.stderr)
        # PortAudio cannot be shut down while it waits on the lost device, and
        # its exit handler would wait for ever: leave without it (every file
        # is already written)
        sys.stdout.flush()
        sys.stderr.flush()
        import os
        os._exit(1)
    return 0


def cmd_devices(args) -> int:
    try:
        import sounddevice as sd
    except OSError as e:
        raise UserError(f"no audio system available: {e}") from None
    print(sd.query_devices())
    return 0


def cmd_params(args) -> int:
    from .control.osc import address_table

    patch = _load(args)
    engine = _engine(args, patch)
    rows = [("address", "target", "range", "unit", "default", "value")]
    for addr, e in address_table(engine, patch.aliases).items():
        p = e.param
        if e.norm:
            rng, unit = "0..1", "norm"
            default, value = p.to_norm(p.default), p.to_norm(p.get(e.index))
        else:
            rng, unit = f"{p.lo:g}..{p.hi:g}", p.unit or "-"
            default, value = p.default, p.get(e.index)
        rows.append((addr, e.target + (" (alias)" if e.alias else ""), rng, unit,
                     f"{default:g}", f"{value:g}"))
    rows.append(("/rtengine/panic", "reset stages", "-", "-", "-", "-"))
    rows.append(("/rtengine/patch/save", "save patch", "path", "s", "-", "-"))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip())
        if j == 0:
            print("  ".join("-" * x for x in w))
    return 0


def cmd_touchosc(args) -> int:
    from .control.touchosc import write_tosc

    patch = _load(args)
    engine = _engine(args, patch)
    n = write_tosc(engine, args.output, title=patch.data.get("name", patch.path.stem))
    print(f"{args.output}: {n} faders on the …/norm addresses; OSC to "
          f"{patch.osc_host}:{patch.osc_port}", file=sys.stderr)
    return 0


def add_engine_commands(sub) -> None:
    """Register render, play, devices, params and touchosc on ``sub``."""
    F = argparse.RawDescriptionHelpFormatter
    patch_help = "patch YAML (default: the shipped patches/vocode.yaml)"

    r = sub.add_parser("render", help="render a patch offline to an audio file",
                       formatter_class=F,
                       description="Run a patch through the live engine without a sound card, "
                                   "faster than real time; the output does not depend on --block-size.",
                       epilog="examples:\n  rtengine render -o out.wav\n"
                              "  rtengine render patches/vocode.yaml -o out.wav --set output.gain=-6 "
                              "--plot out.png")
    r.add_argument("patch", nargs="?", help=patch_help)
    r.add_argument("-o", "--output", required=True, help="output audio file (.wav, .flac)")
    r.add_argument("--duration", type=float, default=None,
                   help="seconds to render (default: the source's length plus the latency)")
    r.add_argument("--seed", type=int, default=None, help="seed (default: the patch's seed)")
    r.add_argument("--block-size", type=positive_int, default=256, help="host block size in samples")
    r.add_argument("--set", action="append", metavar="STAGE.PARAM=VALUE",
                   help="override a parameter (repeatable; list items as stage.param[i]=v)")
    r.add_argument("--plot", metavar="PNG", help="also write a spectrogram of the output")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    r.set_defaults(func=cmd_render)

    p = sub.add_parser("play", help="play a patch on a sound card with OSC control",
                       formatter_class=F,
                       description="Live engine: render thread → ring buffer → sound card; "
                                   "OSC control and OSCQuery while it runs; Ctrl-C stops.",
                       epilog="examples:\n  rtengine play patches/vocode.yaml --duration 10\n"
                              "  rtengine play patches/live-input.yaml --device JACK --block-size 64")
    p.add_argument("patch", nargs="?", help=patch_help)
    p.add_argument("--device", help="output device index or name substring (see 'rtengine devices')")
    p.add_argument("--block-size", type=positive_int, default=256, help="samples per callback")
    p.add_argument("--latency", type=float, default=None, metavar="MS",
                   help="ring buffer fill target in ms (default: max(4 hops, 3 blocks))")
    p.add_argument("--osc", metavar="HOST:PORT", help="listen for OSC here (default: the patch's)")
    p.add_argument("--query-port", type=int, default=None,
                   help="OSCQuery HTTP port (default: the patch's, else OSC port + 1; -1: off)")
    p.add_argument("--no-osc", action="store_true", help="no OSC server")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--record", metavar="FILE", help="write exactly what was sent to the card")
    p.add_argument("--stats", metavar="FILE.json", help="write run statistics as JSON")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the patch's seed)")
    p.add_argument("--set", action="append", metavar="STAGE.PARAM=VALUE", help="override a parameter")
    p.add_argument("-q", "--quiet", action="store_true", help="no status line")
    p.set_defaults(func=cmd_play)

    d = sub.add_parser("devices", help="list audio devices")
    d.set_defaults(func=cmd_devices)

    q = sub.add_parser("params", help="print a patch's OSC address table")
    q.add_argument("patch", nargs="?", help=patch_help)
    q.add_argument("--set", action="append", metavar="STAGE.PARAM=VALUE", help="override a parameter")
    q.set_defaults(func=cmd_params)

    t = sub.add_parser("touchosc", help="write a TouchOSC layout (.tosc) for a patch")
    t.add_argument("patch", nargs="?", help=patch_help)
    t.add_argument("-o", "--output", required=True, help="layout file (.tosc)")
    t.set_defaults(func=cmd_touchosc)

"""The ``rtengine`` command.

Each sub-command imports what it needs when it runs, so ``rtengine --help`` is
quick and commands that play no sound never load PortAudio.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import UserError

EXAMPLES = """\
examples:
  rtengine vocode --example -o example.wav      vocode the built-in test signal
  rtengine vocode song.flac -o song-pghi.wav    resynthesise a file from its mel
  rtengine vocode clips/ -o out/                every file below clips/, mirrored into out/
  rtengine mel song.wav -o song.npy             log-mel (n_mels, frames) for another model
  rtengine vocode song.npy -o song.wav          vocode a mel made elsewhere (see README: mel convention)
  rtengine variation song.wav -o slow.wav --keep 0,1,2,3   LatentFT: keep the patterns slower than 2.7 Hz
  rtengine bench                                speed and quality against reference implementations
"""


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def cmd_mel(args) -> int:
    from .config import get_config
    from .dsp.mel import log_mel
    from .io import read_audio, write_npy

    cfg = get_config(args.config)
    mel = log_mel(read_audio(args.input, cfg.sample_rate), cfg)
    write_npy(args.output, mel)
    print(f"{args.output}: log-mel {mel.shape[0]} x {mel.shape[1]} frames ({cfg.describe()})",
          file=sys.stderr)
    return 0


def cmd_vocode(args) -> int:
    import time
    from pathlib import Path

    from tqdm import tqdm

    from .config import get_config
    from .io import write_audio
    from .stages.vocoder import VocoderStage
    from .vocode import Job, plan_jobs, play_stdin, vocode_file, vocode_stdin

    from .stages.vocoder import DEFAULT_VOCODER

    cfg = get_config(args.config)
    args.model = args.model or DEFAULT_VOCODER
    if args.play and not args.stdin:
        raise UserError("--play streams from standard input: add --stdin")
    if args.output is None and not args.play:
        raise UserError("no output: give -o FILE (or -o - for raw float32 on stdout, or --play with --stdin)")
    options = dict(mode=args.mode, use_lambda=args.use_lambda)
    if args.sinusoid_fit is not None:
        options["sinusoid_fit"] = args.sinusoid_fit
    if args.model == "pghi":   # the learned vocoders are causal unless a patch asks for look-ahead
        options["lookahead"] = not args.causal
    vocoder = VocoderStage("vocoder", cfg, options, args.seed, model=args.model)
    if args.stdin:
        if args.inputs or args.example:
            raise UserError("give either --stdin or input files, not both")
        t0 = time.perf_counter()
        if args.play:
            from .cli_engine import _device

            st = play_stdin(cfg, vocoder, device=_device(args.device), block_size=args.block_size or 256,
                            latency_ms=args.latency,
                            record=args.output if args.output not in (None, "-") else None)
            from .engine.live import stats_line

            print(f"{stats_line(st)} (model {args.model})", file=sys.stderr)
            return 0
        frames, seconds = vocode_stdin(cfg, vocoder, args.output)
        dt = time.perf_counter() - t0
        print(f"{args.output}: {frames} mel frames from stdin, {seconds:.1f} s of audio in {dt:.2f} s "
              f"(model {args.model}, latency {vocoder.latency_samples / cfg.sample_rate * 1000:.1f} ms)",
              file=sys.stderr)
        return 0
    if args.output == "-":
        raise UserError("-o - (raw audio on stdout) is for --stdin; give an output file")
    if args.example:
        if args.inputs:
            raise UserError("give either --example or input files, not both")
        from .signals import test_signal
        from .io import atomic_path

        with atomic_path(Path(args.output).with_suffix(".input.wav")) as tmp:
            import soundfile as sf
            sf.write(tmp, test_signal(cfg.sample_rate), cfg.sample_rate, format="WAV")
        jobs = [Job(Path(args.output).with_suffix(".input.wav"), Path(args.output))]
        print(f"example input written to {jobs[0].source}", file=sys.stderr)
    elif not args.inputs:
        raise UserError("no input: give audio files, .npy mels or directories (or --example)")
    else:
        jobs = plan_jobs(args.inputs, args.output)
    t0 = time.perf_counter()
    seconds = 0.0
    for job in tqdm(jobs, desc="vocode", unit="file", disable=len(jobs) < 2, file=sys.stderr):
        audio = vocode_file(job.source, cfg, vocoder, args.block_size)
        write_audio(job.target, audio, cfg.sample_rate)
        seconds += len(audio) / cfg.sample_rate
    dt = time.perf_counter() - t0
    where = jobs[0].target if len(jobs) == 1 else Path(args.output)
    print(f"{where}: {len(jobs)} file(s), {seconds:.1f} s of audio in {dt:.2f} s "
          f"({seconds / max(dt, 1e-9):.0f}x real time, model {args.model})", file=sys.stderr)
    return 0


def cmd_variation(args) -> int:
    import math
    import time

    from tqdm import tqdm

    from .config import get_config
    from .io import read_audio, write_audio
    from .variation import latent_variation, parse_gains

    gains = parse_gains(args.bands, args.keep, args.gains)
    for name in ("lock", "lock_latent"):
        v = getattr(args, name)
        if v is not None and not 0 <= v <= 1:
            raise UserError(f"--{name.replace('_', '-')} must be in 0..1, got {v:g}")
    cfg = get_config("22k")
    audio = read_audio(args.input, cfg.sample_rate)
    if len(audio) < cfg.n_fft:
        raise UserError(f"{args.input}: too short ({len(audio)} samples) for a variation")
    t0 = time.perf_counter()
    with tqdm(total=None, unit="chunk", desc="variation", disable=args.quiet, leave=False) as bar:
        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)
        y = latent_variation(audio, cfg, gains, args.model, args.steps, args.guidance, args.seed,
                             args.live, args.lock, args.lock_latent, progress)
    write_audio(args.output, y, cfg.sample_rate)
    if args.plot:
        from .engine.render import plot_spectrogram
        from pathlib import Path
        plot_spectrogram(y, cfg.sample_rate, args.plot,
                         title=f"{Path(args.input).name}: variation, gains {', '.join(f'{g:g}' for g in gains)}")
    if not args.quiet:
        print(f"{args.output}: {len(y) / cfg.sample_rate:.2f} s in {time.perf_counter() - t0:.1f} s, bands "
              f"{args.bands}, gains {', '.join(f'{g:g}' for g in gains)}, peak "
              f"{20 * math.log10(max(float(abs(y).max()), 1e-12)):.1f} dBFS", file=sys.stderr)
    return 0


def cmd_bench(args) -> int:
    from .bench import run_bench

    return run_bench(json_out=args.json, seconds=args.seconds, quick=args.quick,
                     models=not args.no_models)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rtengine",
        description="Real-time neural spectral audio engine: vocode mel spectrograms, "
                    "render and play patches, control them over OSC.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"rtengine {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    m = sub.add_parser("mel", help="compute the log-mel of an audio file",
                       description="Log-mel spectrogram in the engine's convention: "
                                   "ln(max(mel, 1e-5)) of Slaney mel magnitudes; saved as "
                                   ".npy of shape (n_mels, frames).")
    m.add_argument("input", help="audio file (any format soundfile reads; resampled)")
    m.add_argument("-o", "--output", required=True, help="output .npy")
    m.add_argument("--config", default="22k", help="audio config: 22k (default) or 44k")
    m.set_defaults(func=cmd_mel)

    v = sub.add_parser(
        "vocode", help="turn audio (via its mel) or mel files into audio",
        description="Vocode audio files (analysed to log-mel first), .npy log-mels "
                    "(n_mels, frames), or directories of them, or a stream of raw float32 "
                    "log-mel frames on stdin. The default vocoder, pgvoc-22k, is the PG "
                    "vocoder network: it predicts the magnitude and the phase gradient from "
                    "the mel and integrates the gradient into phase. 'pghi' is the "
                    "model-free vocoder: it inverts the mel filterbank and estimates the "
                    "phase gradient from the log-magnitude. Either can take the frequencies of "
                    "low partials from a sparse sinusoid fit of the mel (--sinusoid-fit), which "
                    "keeps low notes in tune; pgvoc-22k does by default.",
        epilog="examples:\n  rtengine vocode --example -o example.wav\n"
               "  rtengine vocode in.wav -o out.wav --block-size 64\n"
               "  rtengine vocode mels/ -o wavs/ --model pghi\n"
               "  other_model | rtengine vocode --stdin -o out.wav     80 float32 per frame, any rate\n"
               "  other_model | rtengine vocode --stdin --play         to the sound card as frames arrive\n"
               "\nThe mel convention (what another model must produce) is in the README, 'Conventions'.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("inputs", nargs="*", help="audio files, .npy mels or directories")
    v.add_argument("-o", "--output", default=None,
                   help="output file (one input) or directory (several inputs or a directory); "
                        "with --stdin, a file or - (raw float32 samples on stdout)")
    v.add_argument("--example", action="store_true",
                   help="vocode the built-in 10 s test signal (also written beside the output)")
    v.add_argument("--model", default=None,
                   help="vocoder: pgvoc-22k (the default: the PG vocoder network), pghi (model-free), "
                        "or another model under models/")
    v.add_argument("--config", default="22k", help="audio config: 22k (default) or 44k")
    v.add_argument("--block-size", type=positive_int, default=None, metavar="B",
                   help="stream in host blocks of B samples, as a live engine would; "
                        "the output is the same for any B (up to float32 rounding with a network)")
    v.add_argument("--mode", choices=["heap", "lambda"], default="heap",
                   help="phase integration: heap (default) or the PG paper's per-class lambda")
    v.add_argument("--causal", action="store_true",
                   help="pghi: no look-ahead, backward time differences (one frame less latency); "
                        "pgvoc-22k is causal already")
    v.add_argument("--sinusoid-fit", type=int, default=None, metavar="BINS",
                   help="frequencies of the partials below bin BINS from a sparse sinusoid fit of "
                        "the mel (64 = 1.4 kHz at 22k; 0 = off). Default: the model card's "
                        "(pgvoc-22k: 64); pghi: off")
    v.add_argument("--use-lambda", action="store_true",
                   help="random phase on bins the lambda test classifies as noise (heap mode)")
    v.add_argument("--seed", type=int, default=0, help="seed of the random phases")
    v.add_argument("--stdin", action="store_true",
                   help="read raw float32 log-mel frames (n_mels values each, native byte order) "
                        "from a pipe and vocode them as they arrive")
    v.add_argument("--play", action="store_true",
                   help="with --stdin: play on the sound card (-o FILE also records what is played)")
    v.add_argument("--device", default=None, help="with --play: output device (index or name, see "
                                                  "'rtengine devices')")
    v.add_argument("--latency", type=float, default=None, metavar="MS",
                   help="with --play: ring buffer fill target in ms (default: max(4 hops, 3 blocks)); "
                        "raise it if a loaded machine underruns")
    v.set_defaults(func=cmd_vocode)

    lv = sub.add_parser(
        "variation", help="a LatentFT variation of an audio file: keep patterns by timescale",
        description="Generate a variation of an audio file that keeps only the musical patterns of\n"
                    "chosen timescales (LatentFT: band gains on the spectrum of the latent sequence).\n"
                    "The bands of the 8-band partition, in Hz of change over time: 0-0.34, 0.34-0.68,\n"
                    "0.68-1.35, 1.35-2.7 (slow: chords, dynamics), 2.7-5.4, 5.4-10.8, 10.8-21.5,\n"
                    "21.5-43.1 (fast: rhythm, onsets). By default the whole file's latent is masked\n"
                    "at once, as in the LatentFT paper; --live streams it through the live stage's\n"
                    "one-sided window instead. Vocoded by PGHI; peak at most -1 dBFS; written\n"
                    "atomically.",
        epilog="examples:\n  rtengine variation loop.wav -o slow.wav --keep 0,1,2,3\n"
               "  rtengine variation loop.wav -o beat.wav --bands 4 --gains 0,0,2,1 --seed 3\n"
               "  rtengine variation loop.wav -o live.wav --live --plot live.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    lv.add_argument("input", help="audio file (any format soundfile reads; resampled to 22050 Hz)")
    lv.add_argument("-o", "--output", required=True, help="output audio file")
    lv.add_argument("--bands", type=int, default=8, choices=(2, 4, 8), help="band partition (default 8)")
    lv.add_argument("--keep", default=None, metavar="I,J,...",
                    help="bands to keep, 0 = slowest (the others are removed); default: all")
    lv.add_argument("--gains", default=None, metavar="G0,G1,...",
                    help="one gain per band instead of --keep: 0 remove, 1 keep, up to 2 boost")
    lv.add_argument("--seed", type=int, default=0, help="noise seed: another seed, another variation")
    lv.add_argument("--steps", type=positive_int, default=None, help="diffusion steps (default: the card's)")
    lv.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance (default 1)")
    lv.add_argument("--lock", type=float, default=None,
                    help="level lock 0..1 (default: the card's): how tightly each frame's level follows the bands")
    lv.add_argument("--lock-latent", type=float, default=None,
                    help="share of that level read from the latent's level channels (default: the card's)")
    lv.add_argument("--live", action="store_true",
                    help="the live stage's one-sided window instead of the whole file masked at once")
    lv.add_argument("--model", default="latentft-22k", help="LatentFT model under models/ or a folder")
    lv.add_argument("--plot", default=None, metavar="PNG", help="also write the output's spectrogram")
    lv.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    lv.set_defaults(func=cmd_variation)

    b = sub.add_parser("bench", help="measure speed and quality against reference implementations",
                       description="Runs every figure on one fixed 10 s test signal (tones with "
                                   "vibrato, clicks, noise) and compares with librosa Griffin-Lim "
                                   "and pghipy measured in the same run.")
    b.add_argument("--json", metavar="FILE", nargs="?", const="-", default=None,
                   help="also write the results as JSON (to FILE, or stdout with no FILE)")
    b.add_argument("--seconds", type=float, default=10.0, help="length of the test signal")
    b.add_argument("--quick", action="store_true", help="fewer repetitions (for tests)")
    b.add_argument("--no-models", action="store_true",
                   help="skip the shipped models (pgvoc-22k, iffar-22k, latentft-22k)")
    b.set_defaults(func=cmd_bench)

    try:
        from .cli_engine import add_engine_commands
    except ImportError:
        pass
    else:
        add_engine_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"rtengine: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rtengine: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:   # output piped into head & co.
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

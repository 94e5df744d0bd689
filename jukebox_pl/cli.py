"""The ``jukebox-pl`` command line: run, show and validate recipes, list components."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import traceback
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from jukebox_pl import __version__, recipes, registry, trust
from jukebox_pl.errors import JukeboxError
from jukebox_pl.recipe_validation import validate

EXIT_ERROR = 2
NO_DOTTED_PATHS_HELP = (
    "refuse components named by dotted path (package.module:Object), which import and run code, in recipes "
    f"and in stored checkpoints; registered names still work (also: {trust.NO_DOTTED_PATHS_ENV}=1)"
)
TRUST_CODE_HELP = (
    "let the recipes stored with the models this command loads (exports, checkpoints) name any code, dotted paths "
    "included; without it they reach only components of jukebox-pl and installed plugins. Only for models whose "
    "source you trust"
)


def _recipe_arguments(parser: argparse.ArgumentParser, trust_code: bool = False) -> None:
    parser.add_argument("recipe", help="a recipe file, or a packaged recipe name such as vqvae/small")
    parser.add_argument("overrides", nargs="*", help="key=value (YAML value), or ~key to delete a key")
    _code_options(parser, trust_code)


def _code_options(parser: argparse.ArgumentParser, trust_code: bool) -> None:
    """``--no-dotted-paths`` (and ``--trust-code``) after the command too; SUPPRESS keeps each from undoing the
    same option given before."""
    parser.add_argument("--no-dotted-paths", action="store_true", default=argparse.SUPPRESS, help=NO_DOTTED_PATHS_HELP)
    if trust_code:
        parser.add_argument("--trust-code", action="store_true", default=argparse.SUPPRESS, help=TRUST_CODE_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jukebox-pl", description="Jukebox-style music generation: run recipes, list components."
    )
    parser.add_argument("--version", action="version", version=f"jukebox-pl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="also print debugging messages")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="print only warnings and errors")
    parser.add_argument("--no-dotted-paths", action="store_true", help=NO_DOTTED_PATHS_HELP)
    parser.add_argument("--trust-code", action="store_true", help=TRUST_CODE_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="validate a recipe and run its pipeline")
    _recipe_arguments(run, trust_code=True)
    run.set_defaults(handler=_run)

    sample = commands.add_parser(
        "sample", help="sample music with a sample recipe (sample/ancestral, primed, continue, upsample)"
    )
    _recipe_arguments(sample, trust_code=True)
    sample.set_defaults(handler=_sample)

    show = commands.add_parser("show", help="print a recipe composed, overridden and resolved")
    _recipe_arguments(show)
    show.add_argument("--unresolved", action="store_true", help="keep ${...} interpolations as written")
    show.set_defaults(handler=_show)

    validate = commands.add_parser("validate", help="check a recipe against every component's signature")
    _recipe_arguments(validate)
    validate.set_defaults(handler=_validate)

    ls = commands.add_parser("ls", help="list registered components (of one KIND) and plugins")
    ls.add_argument("kind", nargs="?", help=f"one of: {', '.join(registry.DEFAULT_KINDS)}")
    ls.set_defaults(handler=_ls)

    recipe_list = commands.add_parser("recipes", help="list the packaged recipes")
    recipe_list.set_defaults(handler=_recipes)

    export = commands.add_parser("export", help="write a training checkpoint as safetensors + its recipe")
    export.add_argument("checkpoint", help="a .ckpt written by the train pipeline")
    export.add_argument("out_dir", help="folder for model.safetensors and recipe.yaml")
    _code_options(export, trust_code=True)
    export.set_defaults(handler=_export)

    imports = commands.add_parser("import", help="convert released weights into jukebox-pl exports")
    sources = imports.add_subparsers(dest="import_source", required=True)
    openai = sources.add_parser(
        "openai", help="openai/jukebox .pth.tar files: the released VQ-VAE, priors and upsamplers, or your own sizes"
    )
    described = openai.add_mutually_exclusive_group()
    described.add_argument(
        "--model",
        choices=["5b", "5b_lyrics", "1b_lyrics"],
        help="the released files: which top prior (the VQ-VAE and upsamplers are shared)",
    )
    described.add_argument(
        "--hps",
        metavar="SETS[,KEY=VALUE...]",
        help="a checkpoint of your own size, in openai/jukebox's hyper-parameters as you trained it, "
        "e.g. small_vqvae,small_prior,level=1,labels=false (without --model or --hps: the "
        "hyper-parameters the checkpoint stores)",
    )
    openai.add_argument("--vqvae", help="vqvae.pth.tar")
    openai.add_argument(
        "--prior", help="the top-level prior, prior_level_2.pth.tar (with --hps: the prior at its level)"
    )
    openai.add_argument(
        "--upsamplers",
        nargs="*",
        default=[],
        metavar="FILE",
        help="prior_level_1.pth.tar prior_level_0.pth.tar (the middle level first)",
    )
    openai.add_argument("--ids", help="folder of v2_/v3_artist_ids.txt and _genre_ids.txt")
    openai.add_argument("--out", required=True, help="output folder: one export folder per model")
    openai.add_argument(
        "--dtype", choices=["float32", "float16", "bfloat16"], help="cast the weights (default: as stored)"
    )  # fmt: skip
    openai.set_defaults(handler=_import_openai)

    data = commands.add_parser("data", help="prepare datasets").add_subparsers(dest="data_command", required=True)
    shards = data.add_parser(
        "shards", help="write a music folder (labels from tags, lyric files, folders, or a metadata file) as shards"
    )
    shards.add_argument(
        "--audio", required=True, help="folder of audio files (wav, flac, ogg, opus, mp3, aiff; m4a/aac with PyAV)"
    )
    shards.add_argument(
        "--metadata",
        help="JSONL or CSV: path, artist, genre, lyrics, title, ...; its rows are the songs, and each field it "
        "gives overrides the tags (without it: every audio file under --audio, labelled from its tags, "
        "song.lrc/song.txt beside it and Artist/Album/ folders)",
    )
    shards.add_argument("--out", required=True, help="output folder for the shards and dataset.json")
    shards.add_argument("--sample-rate", type=int, default=44100)
    shards.add_argument("--shard-size", default="256MB", help="close a shard past this size (default 256MB)")
    shards.add_argument("--min-seconds", type=float, default=2.0, help="skip songs shorter than this")
    shards.add_argument("--validation-fraction", type=float, default=0.1, help="share of songs held out")
    shards.add_argument("--strict", action="store_true", help="stop at the first bad file instead of skipping it")
    shards.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be written (songs, artists, genres, minutes, lyrics) and the files that would be "
        "skipped, and why; write nothing",
    )
    shards.set_defaults(handler=_data_shards)
    demo = data.add_parser("demo", help="build the demo dataset from music21's corpus (offline, cached)")
    demo.add_argument("--out", required=True, help="output folder (audio/, metadata.jsonl, shards/)")
    demo.add_argument("--minutes", type=float, default=20.0, help="minutes of music to render (default 20)")
    demo.add_argument("--max-seconds", type=float, default=40.0, help="cut each piece at this length")
    demo.add_argument("--workers", type=int, default=None, help="render processes (default: the cores, up to 4)")
    demo.add_argument("--seed", type=int, default=0, help="which pieces are picked from each collection")
    demo.set_defaults(handler=_data_demo)
    return parser


def _run(args: argparse.Namespace, out: TextIO) -> None:
    _run_recipe(recipes.load(args.recipe, args.overrides), out)


def _run_recipe(recipe: recipes.Recipe, out: TextIO) -> None:
    from jukebox_pl.pipelines.base import run_recipe

    summary = run_recipe(recipe)
    if summary:
        out.write("summary:\n")
        width = max(len(str(key)) for key in summary)
        for key, value in summary.items():
            out.write(f"  {str(key).ljust(width)}  {_format(value)}\n")
    _leave_together()


def _leave_together() -> None:
    """In a run of several processes, wait for every rank, then close the process group.

    A rank that exited while another still worked (rank 0 writes the export) took its side of the
    process group down with the interpreter: gloo aborted it ("terminate called without an active
    exception"), and the other rank then never finished exiting.
    """
    distributed = sys.modules.get("torch.distributed")  # never imported: nothing to close
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.barrier()
        distributed.destroy_process_group()


def _sample(args: argparse.Namespace, out: TextIO) -> None:
    """`run` for sample recipes; a bare name (``ancestral``) is looked up under ``sample/``."""
    reference = args.recipe
    if "/" not in reference and not Path(reference).exists() and f"sample/{reference}" in recipes.packaged_recipes():
        reference = f"sample/{reference}"
    recipe = recipes.load(reference, args.overrides)
    pipeline = recipe.resolved(allow_missing=True).get("pipeline")
    if pipeline != "sample":
        raise JukeboxError(f"{recipe.source}: pipeline is {pipeline!r}, not 'sample'; run it with `jukebox-pl run`")
    _run_recipe(recipe, out)


def _show(args: argparse.Namespace, out: TextIO) -> None:
    out.write(recipes.load(args.recipe, args.overrides).to_yaml(resolve=not args.unresolved))


def _validate(args: argparse.Namespace, out: TextIO) -> None:
    recipe = recipes.load(args.recipe, args.overrides)
    checked = validate(recipe)
    out.write(f"ok: {recipe.source} is valid ({len(checked)} components checked)\n")
    for description in checked:
        out.write(f"  {description}\n")


def _ls(args: argparse.Namespace, out: TextIO) -> None:
    rows = [(c.kind or "", c.name, _provider(c.provider), c.summary) for c in registry.components(args.kind)]
    header = ("KIND", "NAME", "PROVIDER", "SUMMARY")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        columns = [cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)]
        out.write("  ".join([*columns, row[3]]) + "\n")
    failed = [plugin for plugin in registry.REGISTRY.plugins if plugin.error]
    if failed:
        out.write("\nplugins that failed to load (their components are missing above):\n")
        for plugin in failed:
            out.write(
                f"  {plugin.entry_point} ({plugin.distribution} {plugin.version}, {plugin.value}): {plugin.error}\n"
            )


def _recipes(args: argparse.Namespace, out: TextIO) -> None:
    out.write(f"packaged recipes in {recipes.recipes_root()}:\n")
    for name in recipes.packaged_recipes():
        out.write(f"  {name}\n")


def _data_shards(args: argparse.Namespace, out: TextIO) -> None:
    from jukebox_pl.data.shards import format_plan, write_shards

    options = ("sample_rate", "shard_size", "strict", "min_seconds", "validation_fraction", "dry_run")
    manifest = write_shards(args.audio, args.metadata, args.out, **{name: getattr(args, name) for name in options})
    if args.dry_run:
        out.write(format_plan(manifest))
        return
    _describe_dataset(manifest, Path(args.out), out)


def _export(args: argparse.Namespace, out: TextIO) -> None:
    from jukebox_pl.checkpoints.export import export_checkpoint

    folder = export_checkpoint(args.checkpoint, args.out_dir)
    out.write(f"exported {args.checkpoint} to {folder} (load it with jukebox_pl.load)\n")


def _import_openai(args: argparse.Namespace, out: TextIO) -> None:
    import torch

    from jukebox_pl.checkpoints.openai import import_model
    from jukebox_pl.checkpoints.openai_hparams import RELEASED

    if len(args.upsamplers) > 2:
        raise JukeboxError("--upsamplers takes at most two files: level 1 (middle), then level 0 (bottom)")
    if args.hps and args.upsamplers:
        raise JukeboxError(
            "--hps describes one model: import each prior with its own --hps and --prior (its level in --hps, e.g. "
            "small_vqvae,small_upsampler,level=0)"
        )
    if args.model:  # the released files: each is described by its row of openai/jukebox's hparams.py
        upsamplers = [RELEASED[f"upsampler_level_{1 - i}"] for i in range(len(args.upsamplers))]
        described = [RELEASED["vqvae"], RELEASED[f"prior_{args.model}"], *upsamplers]
    else:  # --hps for the files given, or None: the hyper-parameters each file stores
        described = [args.hps] * (2 + len(args.upsamplers))
    jobs = [("vqvae", args.vqvae), ("prior", args.prior), *(("prior", path) for path in args.upsamplers)]
    jobs = [(part, path, hps) for (part, path), hps in zip(jobs, described, strict=True) if path]
    if not jobs:
        raise JukeboxError("nothing to import: give --vqvae, --prior and/or --upsamplers")
    dtype = getattr(torch, args.dtype) if args.dtype else None
    for part, path, hps in jobs:
        written = import_model(part, path, args.out, hps, args.ids, dtype)
        out.write(f"imported {path} ({hps or 'its stored hps'}) -> {written}\n")
    out.write(f"sample with: jukebox-pl sample ancestral sampler.vqvae={Path(args.out) / 'vqvae'} "
              f"'sampler.priors=[{Path(args.out) / 'prior'}, ...]'\n")  # fmt: skip


def _data_demo(args: argparse.Namespace, out: TextIO) -> None:
    from jukebox_pl.data.demo import build_demo_dataset

    manifest = build_demo_dataset(
        args.out, minutes=args.minutes, max_seconds=args.max_seconds, workers=args.workers, seed=args.seed
    )
    _describe_dataset(manifest, Path(args.out) / "shards", out)


def _describe_dataset(manifest: Mapping[str, Any], shards_dir: Path, out: TextIO) -> None:
    from jukebox_pl.data.shard_reader import MANIFEST

    counts = manifest["counts"]
    out.write(
        f"wrote {counts['songs']} songs ({counts['train']} train, {counts['validation']} validation, "
        f"{manifest['total_seconds'] / 60:.1f} min, {len(manifest['artists']) - 1} artists, "
        f"{len(manifest['genres']) - 1} genres, {counts['with_lyrics']} with lyrics); "
        f"skipped {counts['skipped']}; manifest: {shards_dir / MANIFEST}\n"
    )


def _provider(distribution: str) -> str:
    import importlib.metadata as metadata

    try:
        return f"{distribution} {metadata.version(distribution)}"
    except (metadata.PackageNotFoundError, ValueError):
        return distribution


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_format(v)}" for k, v in value.items())
    return str(value)


# A full disk, a full quota, or a file size limit: the write failed for want of space.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    sys.stderr.write(f"warning: {message}\n")


class _StderrLines(logging.Handler):
    """Each message as one line on ``sys.stderr`` as it is when the message comes.

    logging.StreamHandler keeps the stream it was made with; looking it up per message lets a
    caller (pytest's capsys, a test calling main() twice) swap stderr after the handler exists.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(record.getMessage() + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging's own policy for a failed write
            self.handleError(record)


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Send the messages of jukebox_pl's loggers to stderr as plain lines: progress by default,
    debugging messages too with `verbose`, only warnings with `quiet`. Called once per command."""
    package = logging.getLogger("jukebox_pl")
    for earlier in [handler for handler in package.handlers if isinstance(handler, _StderrLines)]:
        package.removeHandler(earlier)  # main() run again in one process
    package.addHandler(_StderrLines())
    package.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    if not args.debug:
        warnings.showwarning = _show_warning
    # Said by Lightning 2.6 about its own code at every fit; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    try:
        with trust.forbid_dotted_paths(args.no_dotted_paths), trust.trust_code(args.trust_code):
            args.handler(args, sys.stdout)
    except JukeboxError as exc:
        if args.debug:
            traceback.print_exc()
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except OSError as exc:
        if exc.errno not in _NO_SPACE:
            return _unexpected(exc, args.debug)
        if args.debug:
            traceback.print_exc()
        where = f" {exc.filename}" if exc.filename else ""
        sys.stderr.write(
            f"error: cannot write{where}: {exc.strerror or exc} (the disk or your quota is full); files written "
            "before are kept, each whole or not at all: free some space and run the same command again\n"
        )
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - one readable line instead of a traceback
        return _unexpected(exc, args.debug)
    return 0


def _unexpected(exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    else:
        sys.stderr.write("(run with --debug for the full traceback)\n")
    sys.stderr.write(f"error: {type(exc).__name__}: {exc}\n")
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

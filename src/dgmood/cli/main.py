"""The ``dgmood`` command line: thin wrappers that parse, call the library and print."""

from __future__ import annotations

import errno
import functools
import inspect
import re
import shlex
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dgmood.nn.allocator import tune_malloc

app = typer.Typer(
    help="Out-of-distribution detection with deep generative models "
    "(Nalisnick et al. 2019 and the fixes that came after).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# long paths and markdown rows stay on one line; into a pipe or a file (no terminal to fit),
# tables get room for their cells instead of the 80 columns rich assumes there
PIPE_WIDTH = 200
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else PIPE_WIDTH)
err_console = Console(stderr=True, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and newline


def shown(value: object) -> str:
    """``value`` as plain text in a Rich console: control characters (terminal escapes)
    become ``?`` and Rich markup is escaped. Names from disk (run folders, configs, files,
    error messages quoting them) go through it, so they print as they are."""
    return escape(_CONTROL.sub("?", str(value)))


DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Data directory (default $DGMOOD_DATA or ~/.cache/dgmood/data)."
    ),
]
Mirror = Annotated[
    Path | None,
    typer.Option(
        "--mirror",
        help="Folder of raw dataset files, one sub-folder per dataset (default $DGMOOD_MIRROR).",
    ),
]
Download = Annotated[
    bool,
    typer.Option("--download", help="Download missing datasets with torchvision's downloaders."),
]
SkipUnreadable = Annotated[
    bool,
    typer.Option(
        "--skip-unreadable",
        help="folder:PATH sets: leave out image files that cannot be read, and list them.",
    ),
]
Device = Annotated[str | None, typer.Option(help="torch device (default: cuda if available).")]
Dequantization = Annotated[
    str,
    typer.Option(
        help="Evaluation dequantization: uniform (seeded noise, as published "
        "numbers), center (u = 0.5) or none (u = 0)."
    ),
]
Seed = Annotated[
    int, typer.Option(help="Seed of the dequantization noise (and of a VAE's sampled ELBO).")
]
ExpectSha256 = Annotated[
    str | None,
    typer.Option(
        "--expect-sha256",
        help="The SHA-256 of RUN_DIR/model.safetensors that the run's sender published "
        "(`sha256sum model.safetensors`); refuse the run unless it matches. The checksum "
        "inside the file catches accidents, not tampering.",
    ),
]
IwaeK = Annotated[
    int,
    typer.Option(
        help="VAEs: add the importance-weighted bound with K samples; it is then the "
        "likelihood used (0 = the ELBO)."
    ),
]


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(error: OSError) -> str:
    where = f" while writing {error.filename}" if error.filename else ""
    return f"{error.strerror or 'no space left on device'}{where}"


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    err_console.print(f"[yellow]warning:[/] {shown(message)}")


FIT_DATA_WORDS = {"train": "train", "held_out": "held-out images"}  # `dgmood scores`


def user_errors(func: F) -> F:
    """Turn errors a user can fix into one red line and exit code 2, not a traceback.

    Ctrl-C is one line and exit code 130 (files are written atomically, so none is partial);
    so is a full disk (exit code 2). Warnings are one yellow line each.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from dgmood.data.errors import DataError
        from dgmood.runs import RunDirError
        from dgmood.training.loop import TrainingDivergedError

        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                return func(*args, **kwargs)
        except (DataError, RunDirError, TrainingDivergedError, ValueError, FileNotFoundError) as e:
            err_console.print(f"[bold red]error:[/] {shown(e)}")
            raise typer.Exit(2) from None
        except OSError as e:
            if e.errno not in DISK_FULL:
                raise
            err_console.print(
                f"[bold red]error:[/] {shown(disk_full_message(e))}. Nothing half-written was "
                "kept; free some space, then run the command again (finished work is reused)"
            )
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted.[/] Finished results and caches are kept.")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _count(option: str, value: int) -> int:
    """``value`` of a count option (``--limit``: 0 = all); a negative one is refused."""
    if value < 0:
        raise ValueError(f"{option} must be >= 0 (0 = all), got {value}")
    return value


def _sources(
    data_dir: Path | None, mirror: Path | None, download: bool, skip_unreadable: bool = False
) -> Any:
    from dgmood.data.loading import DataSources

    return DataSources(
        data_dir=str(data_dir) if data_dir else None,
        mirror=str(mirror) if mirror else None,
        download=download,
        skip_unreadable=skip_unreadable,
    )


@app.command()
def datasets() -> None:
    """List the datasets dgmood knows, with shape and how to get them."""
    from dgmood.data.datasets import DATASETS, DERIVED_SPLITS

    table = Table("name", "channels", "size", "splits", "what it is", "how to get")
    for spec in DATASETS.values():
        splits = [*spec.splits, *(DERIVED_SPLITS if "train" in spec.splits else ())]
        table.add_row(
            spec.name,
            str(spec.channels),
            str(spec.size),
            ",".join(splits),
            spec.notes,
            spec.how_to_get,
        )
    table.add_row("folder:PATH", "any", "any", "-", "your own images (PNG/JPEG/...)", "-")
    console.print(table)


@app.command()
def models() -> None:
    """List model names (families and their architecture aliases), kind, size presets and
    capabilities (what scores and studies can ask of them)."""
    from dgmood.models.registry import capabilities, family_spec, model_names, resolve_model

    table = Table("model", "family", "kind", "presets")
    table.add_column("capabilities", overflow="fold")
    for name in model_names():
        config = resolve_model(name, "cpu")
        spec = family_spec(config)
        table.add_row(
            name,
            spec.name,
            spec.kind,
            " ".join(spec.presets),
            " ".join(sorted(capabilities(config))),
        )
    console.print(table)


@app.command("pretrained")
@user_errors
def list_pretrained(
    markdown: Annotated[
        bool, typer.Option(help="Print the table as Markdown (as in docs/RESULTS.md).")
    ] = False,
) -> None:
    """List the pretrained runs shipped with dgmood: use them as `pretrained:NAME` wherever
    a run directory goes (score, evaluate, predict, benchmark --model, reproduce --model).

    Each weights file is checked against the sha256 listed here whenever it is loaded.
    """
    from dgmood import pretrained

    runs = pretrained.manifest()
    if markdown:
        typer.echo(pretrained.markdown_table(runs), nl=False)
        return
    if not runs:
        console.print("no pretrained runs are shipped with this copy of dgmood")
        return
    table = Table(*pretrained.TABLE_COLUMNS)
    for row in pretrained.table_rows(runs):
        table.add_row(*row)
    console.print(table)
    for line in pretrained.provenance_lines(runs):
        console.print(line, markup=False, soft_wrap=True)


@app.command("config")
@user_errors
def show_config(
    model: Annotated[str, typer.Argument(help="Model name (see `dgmood models`).")],
    preset: Annotated[str, typer.Option(help="Size preset: tiny, cpu or paper.")] = "cpu",
    dataset: Annotated[str, typer.Option(help="Training dataset.")] = "fashion-mnist",
) -> None:
    """Print the full YAML config of MODEL at --preset (edit it, then `train --config`)."""
    from dgmood.presets import run_preset

    typer.echo(run_preset(model, preset, dataset).to_yaml(), nl=False)


@app.command()
@user_errors
def train(
    model: Annotated[
        str | None,
        typer.Argument(
            help="Model: glow, cv-glow, realnvp, pixelcnnpp, vae, diffusion, cnn, ... (every "
            "family and alias: `dgmood models`)."
        ),
    ] = None,
    preset: Annotated[str, typer.Option(help="Size preset: tiny, cpu or paper.")] = "cpu",
    dataset: Annotated[
        str, typer.Option(help="Training dataset (see `dgmood datasets`).")
    ] = "fashion-mnist",
    run_dir: Annotated[
        Path | None, typer.Option(help="Where to write the run (must be new unless --resume).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="A config.yaml to start from instead of MODEL/--preset.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a config value, "
            "e.g. --set train.steps=200 --set "
            "model.hidden_channels=32.",
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --run-dir from its last checkpoint.")
    ] = False,
    data_dir: DataDir = None,
    mirror: Mirror = None,
    download: Download = False,
    device: Device = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    budget: Annotated[
        float,
        typer.Option(
            help="Train for this many minutes, then stop cleanly with a checkpoint (steps "
            "unlimited unless --set train.steps=N; 0 = the preset's steps); --resume continues."
        ),
    ] = 0.0,
    nproc: Annotated[
        int,
        typer.Option(
            help="Data-parallel processes (one per GPU, or CPU processes with gloo), started "
            "through torch's launcher; train.batch_size is the global batch."
        ),
    ] = 1,
) -> None:
    """Train a model; writes config.yaml, model.safetensors, training state and metrics.

    Examples:

      dgmood train glow --preset cpu --dataset fashion-mnist --run-dir runs/glow-fm

      dgmood train vae --budget 30 --set execution.precision=auto

      dgmood train glow --preset paper --dataset cifar10 --nproc 8   # 8 GPUs

      dgmood train --resume --run-dir runs/glow-fm
    """
    from dgmood.config import RunConfig, apply_overrides, replace_path, with_budget
    from dgmood.presets import run_preset
    from dgmood.runs import CONFIG_FILE, check_run_dir
    from dgmood.training.launch import train_processes

    if resume:
        if run_dir is None:
            raise ValueError("--resume needs the --run-dir of the run to continue")
        check_run_dir(run_dir, resume=True)
    if resume and run_dir is not None and config is None:
        cfg = RunConfig.load(run_dir / CONFIG_FILE)
    elif config is not None:
        cfg = RunConfig.load(config)
    elif model is not None:
        cfg = run_preset(model, preset, dataset)
    else:
        raise ValueError(
            "give a MODEL (e.g. `dgmood train glow`), --config, or --resume --run-dir RUN"
        )
    cfg = apply_overrides(cfg, set_ or [])
    if budget > 0:  # train until the budget ends, unless --set train.steps=N caps it too
        capped = any(a.partition("=")[0].strip() == "train.steps" for a in set_ or [])
        # resuming, the budget caps this session's time only: the run keeps its steps (its
        # identity), so a study that asks for it still finds it
        cfg = with_budget(cfg, budget, cfg.train.steps if capped or resume else None)
    if run_dir is None:
        run_dir = Path("runs") / f"{(cfg.preset or 'run').replace('/', '-')}-{cfg.data.dataset}"
    if device:
        cfg = replace_path(cfg, "execution.device", device)
    try:
        result = train_processes(
            cfg,
            run_dir,
            nproc=nproc,
            sources=_sources(data_dir, mirror, download),
            resume=resume,
            progress=progress,
        )
    except KeyboardInterrupt:
        _report_interrupt(run_dir)
        raise typer.Exit(130) from None
    except OSError as error:
        if error.errno not in DISK_FULL:
            raise
        _report_disk_full(run_dir, error)
        raise typer.Exit(2) from None
    took = f" in {result.seconds:.0f} s" if result.seconds else ""
    console.print(f"trained {result.step} steps{took} -> {shown(result.run_dir)}")


def _report_disk_full(run_dir: Path, error: OSError) -> None:
    """One line: the disk is full, what is kept, how to continue."""
    from dgmood.runs import CHECKPOINT_FILE, read_model_metadata

    checkpoint = run_dir / CHECKPOINT_FILE
    if checkpoint.exists():
        step = read_model_metadata(checkpoint).get("step", "?")
        command = shlex.join(["dgmood", "train", "--resume", "--run-dir", str(run_dir)])
        kept = f"the last checkpoint (step {step}) is whole; free some space, then: {command}"
    else:
        kept = "nothing was kept; free some space, then train again"
    err_console.print(f"[bold red]error:[/] {shown(disk_full_message(error))}; {shown(kept)}")


def _report_interrupt(run_dir: Path) -> None:
    """Tell the user where an interrupted run stands and how to continue it."""
    from dgmood.runs import CHECKPOINT_FILE, read_model_metadata

    checkpoint = run_dir / CHECKPOINT_FILE
    if checkpoint.exists():
        step = read_model_metadata(checkpoint).get("step", "?")
        command = shlex.join(["dgmood", "train", "--resume", "--run-dir", str(run_dir)])
        err_console.print(
            f"[yellow]interrupted.[/] The last checkpoint (step {shown(step)}) is in "
            f"{shown(run_dir)}; continue with: {shown(command)}"
        )
    else:
        err_console.print("[yellow]interrupted[/] before the first checkpoint was written.")


def _context(
    out_dir: Path,
    data_dir: Path | None,
    mirror: Path | None,
    download: bool,
    skip_unreadable: bool = False,
    **values: Any,
) -> Any:
    from dgmood.studies import StudyContext

    sources = _sources(data_dir, mirror, download, skip_unreadable)
    return StudyContext(out_dir=out_dir, sources=sources, **values)


StudyContextFor = Callable[[Path], Any]  # out_dir -> the StudyContext a study runs in


def _study_context_options(
    preset: Annotated[
        str,
        typer.Option(
            "--preset", "--scale", help="Size preset (scale) of the runs: tiny, cpu or paper."
        ),
    ] = "cpu",
    steps: Annotated[
        int | None, typer.Option(help="Override the training steps of every run.")
    ] = None,
    budget: Annotated[
        float,
        typer.Option(
            help="Train each run for this many minutes (steps unlimited unless --steps); "
            "0 = the preset's steps."
        ),
    ] = 0.0,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a config value of every run, e.g. --set execution.precision=auto.",
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="Cap each test set at N images (0 = all).")] = 0,
    resume: Annotated[bool, typer.Option(help="Resume interrupted runs in OUT_DIR.")] = False,
    data_dir: DataDir = None,
    mirror: Mirror = None,
    download: Download = False,
    skip_unreadable: SkipUnreadable = False,
    device: Device = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    nproc: Annotated[
        int, typer.Option(help="Data-parallel training processes per run (torch's launcher).")
    ] = 1,
    runs_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the runs live (default OUT_DIR/runs): point several studies at one "
            "folder and each run is trained once, found by what it is."
        ),
    ] = None,
    pretrained: Annotated[
        bool,
        typer.Option(
            help="Use a run shipped with dgmood (`dgmood pretrained`) where its model, data "
            "and training equal a run the study asks for, instead of training it again."
        ),
    ] = True,
) -> StudyContextFor:
    """The options of every command that runs a study, as its context for a given out dir."""

    _count("--limit", limit)

    def context(out_dir: Path) -> Any:
        return _context(
            out_dir,
            data_dir,
            mirror,
            download,
            skip_unreadable,
            preset=preset,
            steps=steps,
            budget_minutes=budget,
            overrides=tuple(set_ or []),
            limit=limit,
            device=device,
            resume=resume,
            progress=progress,
            nproc=nproc,
            runs_root=runs_dir,
            use_pretrained=pretrained,
        )

    return context


def _with_study_context(command: F) -> F:
    """Add the options of :func:`_study_context_options` to ``command``, which receives
    what that function makes of them as its ``study_context`` argument.

    Typer has no option groups; this is how ``reproduce`` and ``benchmark`` declare the
    options they share once: typer reads the combined signature set here.
    """
    group = inspect.signature(_study_context_options, eval_str=True).parameters
    own = inspect.signature(command, eval_str=True)
    params = [p for p in own.parameters.values() if p.name != "study_context"]
    params += group.values()

    @functools.wraps(command)
    def wrapper(**values: Any) -> Any:
        options = {name: values.pop(name) for name in group}
        return command(**values, study_context=_study_context_options(**options))

    wrapper.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper  # type: ignore[return-value]


REPORTS_DIR = Path("reports")  # default home of every study's folder


def _print_result(result: Any, out_dir: Path) -> None:
    for table in result.tables:
        console.print(f"\n[bold]{table.title}[/]")
        console.print(table.to_markdown(), markup=False)
    console.print(result.finding, style="bold", markup=False)
    console.print(f"results: {shown(out_dir)}")
    if (out_dir / "report.html").exists():
        console.print(f"report: {shown(out_dir / 'report.html')}")


@app.command()
@user_errors
def score(
    run_dir: Annotated[
        Path,
        typer.Argument(help="A run directory made by `dgmood train`, or pretrained:NAME."),
    ],
    dataset: Annotated[str, typer.Option(help="Dataset to score.")] = "mnist",
    split: Annotated[str, typer.Option(help="Split to score.")] = "test",
    limit: Annotated[int, typer.Option(help="Score only the first N images (0 = all).")] = 0,
    dequantization: Dequantization = "uniform",
    seed: Seed = 0,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 256,
    iwae_k: IwaeK = 0,
    data_dir: DataDir = None,
    mirror: Mirror = None,
    download: Download = False,
    device: Device = "cpu",
    expect_sha256: ExpectSha256 = None,
) -> None:
    """Per-sample statistics of a dataset under a run, computed once and cached in the run.

    Example: dgmood score runs/glow-fm --dataset mnist --limit 1000
    """
    from dgmood.evaluation.compare import ScoringOptions, score_dataset

    _count("--limit", limit)
    stats, label = score_dataset(
        run_dir,
        dataset,
        split,
        sources=_sources(data_dir, mirror, download),
        limit=limit,
        options=ScoringOptions(_dequant(dequantization), seed, batch_size, iwae_k),
        device=device or "cpu",
        expect_sha256=expect_sha256,
    )
    table = Table("statistic", "mean", "std", "min", "max", title=shown(f"{label} under {run_dir}"))
    for key, value in stats.items():
        if value.ndim == 1:
            cells = (value.mean(), value.std(), value.min(), value.max())
            table.add_row(key, *(f"{v:.4f}" for v in cells))
        else:
            table.add_row(key, f"shape {value.shape}", "", "", "")
    console.print(table)


def _dequant(mode: str) -> Any:
    if mode not in ("uniform", "center", "none"):
        raise ValueError(f"--dequantization must be uniform, center or none, got {mode!r}")
    return mode


ScoreNames = Annotated[
    list[str] | None,
    typer.Option(
        "--score",
        help="OOD score(s) to compare (see `dgmood scores`; default: every score that applies "
        "and needs no extra model).",
    ),
]


@app.command()
@user_errors
def evaluate(
    run_dir: Annotated[
        Path, typer.Argument(help="A run directory of a density model, or pretrained:NAME.")
    ],
    ood: Annotated[list[str], typer.Option("--ood", help="OOD dataset(s) to compare with.")],
    score_names: ScoreNames = None,
    out_dir: Annotated[
        Path | None, typer.Option(help="Where to write results (default RUN_DIR/eval).")
    ] = None,
    limit: Annotated[int, typer.Option(help="Cap each test set at N images (0 = all).")] = 0,
    train_limit: Annotated[int, typer.Option(help="Cap the in-dist train split.")] = 10_000,
    dequantization: Dequantization = "uniform",
    seed: Seed = 0,
    iwae_k: IwaeK = 0,
    data_dir: DataDir = None,
    mirror: Mirror = None,
    download: Download = False,
    device: Device = "cpu",
    expect_sha256: ExpectSha256 = None,
    skip_unreadable: SkipUnreadable = False,
) -> None:
    """In-dist vs OOD: bits/dim table, histograms, AUROC/AUPR/FPR@95TPR of each OOD score.

    Example: dgmood evaluate runs/glow-fm --ood mnist --score nll --limit 2000
    """
    from dgmood.evaluation.compare import ScoringOptions
    from dgmood.pretrained import resolve_run_dir, writable_run_dir
    from dgmood.studies import evaluate_run

    _count("--limit", limit)
    _count("--train-limit", train_limit)
    # a pretrained run is never written to: its eval folder is in the data directory
    out = out_dir or writable_run_dir(resolve_run_dir(run_dir)) / "eval"
    ctx = _context(out, data_dir, mirror, download, skip_unreadable, limit=limit, device=device)
    result = evaluate_run(
        run_dir,
        list(ood),
        ctx,
        scores=list(score_names or []),
        train_limit=train_limit,
        scoring=ScoringOptions(_dequant(dequantization), seed, iwae_k=iwae_k),
        device=device or "cpu",
        expect_sha256=expect_sha256,
    )
    _print_result(result, out)


@app.command("scores")
def list_scores() -> None:
    """List the OOD scores (higher = more OOD), what they need, and their references."""
    from dgmood.scores import score_class, score_names

    table = Table("score", "model", "needs", "summary", "references")
    for name in score_names():
        cls = score_class(name)
        needs = ", ".join(
            [
                *cls.needs_stats,
                *([f"fit on in-dist {FIT_DATA_WORDS[cls.fits_on]}"] if cls.needs_fit else []),
            ]
            + (["the model"] if cls.uses_model else [])
        )
        table.add_row(name, cls.model_kind, needs, cls.summary(), cls.references())
    console.print(table)


@app.command("studies")
def list_studies() -> None:
    """List the studies `dgmood reproduce NAME` runs, with their options and defaults."""
    import dataclasses

    from dgmood.studies import study_class, study_names

    table = Table("study", "question", "options (-o KEY=VALUE)")
    for name in study_names():
        cls = study_class(name)
        options = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls.Options))
        table.add_row(name, cls.title, options)
    console.print(table)


@app.command()
@user_errors
@_with_study_context
def reproduce(
    study: Annotated[str, typer.Argument(help="Study to run (see `dgmood studies`).")],
    model: Annotated[
        str | None, typer.Option(help="Shortcut for -o model=NAME (studies with a model).")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help="A study option KEY=VALUE (repeatable)."),
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option(help="Folder for runs and results (default reports/STUDY).")
    ] = None,
    *,
    study_context: StudyContextFor,
) -> None:
    """Reproduce a study end to end: train (or reuse) its runs, score, compare, write results.

    Examples:
      dgmood reproduce fashion-mnist                      # Glow, cpu preset
      dgmood reproduce fashion-mnist --budget 10 --set execution.precision=auto
                                                          # 10 CPU-minutes of Glow: ~3.3 bits/dim
      dgmood reproduce fashion-mnist --model vae -o iwae_k=100
      dgmood reproduce chicken -o classifier_steps=500 -o photos=[me.jpg]
    """
    out = out_dir or REPORTS_DIR / study
    overrides = list(option or [])
    if model is not None:
        overrides.insert(0, f"model={model}")
    from dgmood.studies import run_study

    # the default layout reports/<study> gets a reports/index.html of every study
    index_dir = None if out_dir else REPORTS_DIR
    result = run_study(study, study_context(out), overrides, index_dir=index_dir)
    _print_result(result, out)


@app.command()
@user_errors
@_with_study_context
def benchmark(
    in_datasets: Annotated[
        list[str] | None,
        typer.Option("--in", help="In-distribution dataset(s) the models are trained on."),
    ] = None,
    ood: Annotated[
        list[str] | None,
        typer.Option("--ood", help="OOD set(s): a dataset name or folder:PATH of your images."),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            help="Model(s) (see `dgmood models`), or pretrained:NAME (see `dgmood pretrained`).",
        ),
    ] = None,
    score_names: Annotated[
        list[str] | None,
        typer.Option(
            "--score",
            help="OOD score(s) (see `dgmood scores`; default: every registered score that "
            "applies, training the auxiliary runs some need).",
        ),
    ] = None,
    train_limit: Annotated[
        int, typer.Option(help="In-distribution training images used to fit scores.")
    ] = 10_000,
    typicality_batch: Annotated[
        list[int] | None,
        typer.Option(
            "--typicality-batch",
            help="Batch size M of the typicality test on batches (repeat for several, e.g. "
            "--typicality-batch 5 --typicality-batch 25): AUROC and share of batches flagged.",
        ),
    ] = None,
    out_dir: Annotated[Path, typer.Option(help="Folder for runs and results.")] = Path(
        "reports/benchmark"
    ),
    *,
    study_context: StudyContextFor,
) -> None:
    """OOD scores on a grid of in-distribution sets x OOD sets x models: AUROC [CI], AUPR,
    FPR@95TPR and cost per image, in one table (CSV + Markdown).

    Default grid: FashionMNIST -> MNIST and MNIST -> FashionMNIST with glow, pixelcnnpp, vae.

    Example: dgmood benchmark --in fashion-mnist --ood mnist --ood folder:photos/ --model vae
    """
    from dgmood.studies import run_study

    options: dict[str, Any] = {"train_limit": _count("--train-limit", train_limit)}
    for key, values in (
        ("in_datasets", in_datasets),
        ("ood", ood),
        ("models", model),
        ("scores", score_names),
        ("typicality_batch", typicality_batch),
    ):
        if values:
            options[key] = tuple(values)
    result = run_study("benchmark", study_context(out_dir), **options)
    _print_result(result, out_dir)


@app.command()
@user_errors
def predict(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="A classifier run (e.g. `dgmood train cnn --dataset mnist`), or pretrained:NAME."
        ),
    ],
    images: Annotated[
        list[Path], typer.Argument(help="Image files (PNG, JPEG, ...; any size, colour or gray).")
    ],
    invert: Annotated[
        bool | None,
        typer.Option(
            "--invert/--no-invert",
            help="Force MNIST's white-on-black inversion on or off (default: photos are "
            "inverted when their background is bright; images already in the dataset's "
            "format are never inverted unless --invert).",
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            help="Folder for the post's figure per image: expected (uniform) vs actual "
            "probabilities."
        ),
    ] = None,
    detector: Annotated[
        Path | None,
        typer.Option(
            help="A density run on the classifier's data (e.g. the chicken study's VAE, or "
            "pretrained:vae-bernoulli-mnist): reject inputs it finds improbable (the post's "
            "simple algorithm)."
        ),
    ] = None,
    score_name: Annotated[
        str, typer.Option("--score", help="The detector's OOD score (see `dgmood scores`).")
    ] = "nll",
    accept: Annotated[
        float,
        typer.Option(help="Fraction of in-distribution validation images the rule accepts."),
    ] = 0.95,
    force_detector: Annotated[
        bool,
        typer.Option(
            "--force-detector",
            help="Use --detector even if it was trained on other data than the classifier.",
        ),
    ] = False,
    data_dir: DataDir = None,
    mirror: Mirror = None,
    download: Download = False,
    expect_sha256: ExpectSha256 = None,
) -> None:
    """Class probabilities of image files; with --detector, whether each is rejected as OOD.

    An image already in the run's dataset format (e.g. 28x28 gray for an MNIST run) takes
    exactly the dataset's geometry (28 -> 32 by zero padding); any other image, a photo,
    takes the documented MNIST-ify path (crop, resize, invert a bright background, stretch).
    The "input" column says which, and whether the image was inverted.

    The detector's rule is its one stored rule: the 95% (--accept) quantile of the score on
    the detector's validation images (the first data.val_size of its val_split), fitted once
    and stored in DETECTOR/thresholds/ (refitted when the detector was trained further); the
    chicken study reports the same rule.

    Examples:
      dgmood predict reports/chicken/runs/cnn-plain-cpu-mnist-* chicken.jpg --plot figs/
      dgmood predict reports/chicken/runs/cnn-plain-cpu-mnist-* chicken.jpg \\
        --detector reports/chicken/runs/vae-bernoulli-cpu-mnist-*
    """
    from dgmood.predict import predict_files, screen_files
    from dgmood.runs import MODEL_FILE, check_file_sha256

    if expect_sha256 is not None:
        check_file_sha256(run_dir / MODEL_FILE, expect_sha256)
    if detector is not None and not force_detector:
        from dgmood.evaluation.reject import check_detector_data

        check_detector_data(run_dir, detector)
    answered = predict_files(run_dir, list(images), invert=invert, plot_dir=plot)
    predictions, figures = answered.predictions, answered.figures
    screening = None
    if detector is not None:
        screening = screen_files(
            detector,
            list(images),
            score_name,
            accept,
            invert=invert,
            sources=_sources(data_dir, mirror, download),
        )
    columns = ["image (input)", "predicted", "confidence", "softmax over classes 0..K-1"]
    if screening is not None:
        columns += ["OOD?", f"{score_name} percentile"]
    table = Table(*columns)
    table.columns[0].overflow = "fold"
    table.columns[3].overflow = "fold"
    for i, p in enumerate(predictions):
        row = [
            f"{shown(p.name)}\n({answered.prepared[i].describe()})",
            str(p.predicted_class),
            f"{p.confidence:.4f}",
            " ".join(f"{v:.3f}" for v in p.probabilities),
        ]
        if screening is not None:
            row += [
                "rejected" if screening.rejected[i] else "accepted",
                f"{screening.percentile[i]:.1f}",
            ]
        table.add_row(*row)
    console.print(table)
    inverted = [
        p.name for p, prep in zip(predictions, answered.prepared, strict=True) if prep.inverted
    ]
    if inverted and invert is None:
        console.print(
            f"inverted to white-on-black (bright background): {', '.join(inverted)}; "
            "--no-invert keeps them as they are",
            markup=False,
        )
    if screening is not None:
        rule = screening.rule
        console.print(
            f"reject rule: {rule.score} > {rule.threshold:.4g} (accepts {rule.accept:.0%} of "
            f"{rule.n} {rule.validation} images; step {rule.step}) stored in {screening.path}",
            markup=False,
        )
    for figure in figures:
        console.print(f"figure: {shown(figure)}")


@app.command("report")
@user_errors
def report(
    path: Annotated[
        Path,
        typer.Argument(
            help="A study result folder (e.g. reports/fashion-mnist), a run directory "
            "evaluated by `dgmood evaluate`, or a folder of studies (also writes index.html)."
        ),
    ],
) -> None:
    """Rebuild the HTML report(s) from the results on disk, without training or scoring.

    Example: dgmood report reports/fashion-mnist
    """
    from dgmood.reporting.html import rebuild_reports

    pages = rebuild_reports(path)
    for page in pages[1:]:
        console.print(f"report: {shown(page)}")
    console.print(f"report: {shown(pages[0])}" if len(pages) == 1 else f"index: {shown(pages[0])}")


@app.command("runs")
@user_errors
def runs(
    root: Annotated[
        Path, typer.Argument(help="Folder searched recursively for run directories.")
    ] = Path("."),
) -> None:
    """List run directories below ROOT: status, model, dataset, step, last validation metric.

    done: trained to train.steps; interrupted: checkpoint below it (continue with
    `dgmood train --resume --run-dir RUN`); failed: config.yaml without a model.
    """
    from dgmood.reporting.runs_table import list_runs

    found = list_runs(root)
    if not found:
        console.print(f"no run directories (config.yaml) below {shown(root)}")
        return
    table = Table(
        "run",
        "status",
        "model",
        "dataset",
        "step",
        "last validation",
        title=f"runs below {shown(root)}",
    )
    table.columns[0].overflow = "fold"
    colours = {"done": "green", "interrupted": "yellow"}
    for run in found:
        step = run.progress
        last = " ".join(f"{k}={v:.4f}" for k, v in run.last_val.items()) or run.note or "-"
        colour = colours.get(run.status, "red")
        name = run.run_dir.relative_to(root) if run.run_dir != root else run.run_dir
        cells = (name, run.model, run.dataset, step, last)  # from disk: any text at all
        table.add_row(*(shown(c) for c in cells[:1]), f"[{colour}]{run.status}[/]",
                      *(shown(c) for c in cells[1:]))  # fmt: skip
    console.print(table)


def main() -> None:  # pragma: no cover
    tune_malloc()  # freed tensors stay in the heap: 1.6-1.8x faster scoring on CPU
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

"""The ``dgmood`` command line: thin wrappers that parse, call the library and print."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Out-of-distribution detection with deep generative models "
    "(Nalisnick et al. 2019 and the fixes that came after).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
reproduce_app = typer.Typer(help="Reproduce a paper experiment end to end.", no_args_is_help=True)
app.add_typer(reproduce_app, name="reproduce")
console = Console(soft_wrap=True)  # long paths and markdown rows stay on one line
err_console = Console(stderr=True, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])

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
IwaeK = Annotated[
    int,
    typer.Option(
        help="VAEs: add the importance-weighted bound with K samples; it is then the "
        "likelihood used (0 = the ELBO)."
    ),
]


def user_errors(func: F) -> F:
    """Turn errors a user can fix into one red line and exit code 2, not a traceback.

    Ctrl-C is one line and exit code 130 (files are written atomically, so none is partial).
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from dgmood.data.errors import DataError
        from dgmood.runs import RunDirError
        from dgmood.training.loop import TrainingDivergedError

        try:
            return func(*args, **kwargs)
        except (DataError, RunDirError, TrainingDivergedError, ValueError, FileNotFoundError) as e:
            err_console.print(f"[bold red]error:[/] {e}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted.[/] Finished results and caches are kept.")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _sources(data_dir: Path | None, mirror: Path | None, download: bool) -> Any:
    from dgmood.data.loading import DataSources

    return DataSources(
        data_dir=str(data_dir) if data_dir else None,
        mirror=str(mirror) if mirror else None,
        download=download,
    )


@app.command()
def datasets() -> None:
    """List the datasets dgmood knows, with shape and how to get them."""
    from dgmood.data.datasets import DATASETS

    table = Table("name", "channels", "size", "splits", "how to get")
    for spec in DATASETS.values():
        table.add_row(
            spec.name, str(spec.channels), str(spec.size), ",".join(spec.splits), spec.how_to_get
        )
    table.add_row("folder:PATH", "any", "any", "-", "your own images (PNG/JPEG/...)")
    console.print(table)


@app.command()
def models() -> None:
    """List model names (families and architectures) and their size presets."""
    from dgmood.models.registry import model_names, resolve_model

    table = Table("model", "family", "presets")
    for name in model_names():
        presets = [p for p in ("tiny", "cpu", "paper") if _has_preset(resolve_model, name, p)]
        table.add_row(name, type(resolve_model(name, presets[0])).family, ", ".join(presets))
    console.print(table)


def _has_preset(resolve: Callable[[str, str], Any], name: str, preset: str) -> bool:
    try:
        resolve(name, preset)
    except ValueError:
        return False
    return True


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
            help="Model: glow, glow-additive, cv-glow, "
            "realnvp, pixelcnnpp, vae, cnn (see `dgmood "
            "models`)."
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
) -> None:
    """Train a model; writes config.yaml, model.safetensors, training state and metrics."""
    from dgmood.config import RunConfig, replace_path
    from dgmood.presets import run_preset
    from dgmood.runs import CONFIG_FILE, check_run_dir
    from dgmood.training import train as train_run

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
    for assignment in set_ or []:
        key, sep, value = assignment.partition("=")
        if not sep:
            raise ValueError(f"--set needs KEY=VALUE, got {assignment!r}")
        cfg = replace_path(cfg, key.strip(), value)
    if run_dir is None:
        run_dir = Path("runs") / f"{(cfg.preset or 'run').replace('/', '-')}-{cfg.data.dataset}"
    try:
        result = train_run(
            cfg,
            run_dir,
            sources=_sources(data_dir, mirror, download),
            resume=resume,
            device=device,
            progress=progress,
        )
    except KeyboardInterrupt:
        _report_interrupt(run_dir)
        raise typer.Exit(130) from None
    console.print(f"trained {result.step} steps in {result.seconds:.0f} s -> {result.run_dir}")


def _report_interrupt(run_dir: Path) -> None:
    """Tell the user where an interrupted run stands and how to continue it."""
    from dgmood.runs import CHECKPOINT_FILE, read_model_metadata

    checkpoint = run_dir / CHECKPOINT_FILE
    if checkpoint.exists():
        step = read_model_metadata(checkpoint).get("step", "?")
        err_console.print(
            f"[yellow]interrupted.[/] The last checkpoint (step {step}) is in {run_dir}; "
            f"continue with: dgmood train --resume --run-dir {run_dir}"
        )
    else:
        err_console.print("[yellow]interrupted[/] before the first checkpoint was written.")


@app.command()
@user_errors
def score(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by `dgmood train`.")],
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
) -> None:
    """Per-sample statistics of a dataset under a run, computed once and cached in the run."""
    from dgmood.inference import score_cached
    from dgmood.training import load_run

    run = load_run(run_dir, device or "cpu")
    data = run.config.data
    imageset = _sources(data_dir, mirror, download).load_like(dataset, split, data).head(limit)
    stats = score_cached(
        run.model,
        imageset,
        run.run_dir,
        step=run.step,
        batch_size=batch_size,
        dequantization=dequantization,
        seed=seed,
        iwae_k=iwae_k,
    )  # type: ignore[arg-type]
    table = Table(
        "statistic",
        "mean",
        "std",
        "min",
        "max",
        title=f"{imageset.label} ({len(imageset)} images) under {run_dir}",
    )
    for key, value in stats.items():
        if value.ndim == 1:
            table.add_row(
                key,
                f"{value.mean():.4f}",
                f"{value.std():.4f}",
                f"{value.min():.4f}",
                f"{value.max():.4f}",
            )
        else:
            table.add_row(key, f"shape {value.shape}", "", "", "")
    console.print(table)


@app.command()
@user_errors
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory of a density model.")],
    ood: Annotated[list[str], typer.Option("--ood", help="OOD dataset(s) to compare with.")],
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
) -> None:
    """In-dist vs OOD: bits/dim table, histograms, AUROC/AUPR/FPR@95TPR of -log p(x)."""
    from dgmood.evaluation.study import likelihood_study, write_study
    from dgmood.training import load_run

    run = load_run(run_dir, device or "cpu")
    study = likelihood_study(
        run,
        list(ood),
        sources=_sources(data_dir, mirror, download),
        limit=limit,
        train_limit=train_limit,
        dequantization=dequantization,
        seed=seed,
        iwae_k=iwae_k,
    )  # type: ignore[arg-type]
    paths = write_study(study, out_dir or run_dir / "eval")
    console.print(study.table_markdown())
    for name, path in paths.items():
        console.print(f"{name}: {path}")


@reproduce_app.command("fashion-mnist")
@user_errors
def reproduce_fashion_mnist(
    model: Annotated[str, typer.Option(help="Density model to train.")] = "glow",
    preset: Annotated[str, typer.Option(help="Size preset: tiny, cpu or paper.")] = "cpu",
    steps: Annotated[int | None, typer.Option(help="Override the preset's training steps.")] = None,
    out_dir: Annotated[Path, typer.Option(help="Folder for the run and the report.")] = Path(
        "reports/fashion-mnist"
    ),
    limit: Annotated[int, typer.Option(help="Cap each test set (0 = all 10,000).")] = 0,
    iwae_k: IwaeK = 0,
    resume: Annotated[bool, typer.Option(help="Resume an interrupted run in OUT_DIR/run.")] = False,
    data_dir: DataDir = None,
    mirror: Mirror = None,
    download: Download = False,
    device: Device = None,
) -> None:
    """Train on FashionMNIST, score FashionMNIST and MNIST tests: MNIST gets *higher* likelihood."""
    import dataclasses

    from dgmood.evaluation.study import likelihood_study, write_study
    from dgmood.models.base import DensityModel
    from dgmood.models.registry import build_model
    from dgmood.presets import run_preset
    from dgmood.training import load_run
    from dgmood.training.loop import train_or_reuse

    cfg = run_preset(model, preset, "fashion-mnist")
    if not isinstance(build_model(cfg.model, cfg.data), DensityModel):
        raise ValueError(
            f"{model} is not a density model; choose glow, cv-glow, realnvp, pixelcnnpp or a vae"
        )
    if steps is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps))
    sources = _sources(data_dir, mirror, download)
    run_dir = out_dir / "run"
    if not train_or_reuse(cfg, run_dir, sources=sources, resume=resume, device=device):
        console.print(f"reusing the finished run in {run_dir}")
    run = load_run(run_dir, "cpu")
    study = likelihood_study(
        run, ["mnist"], sources=sources, limit=limit, train_limit=limit or 10_000, iwae_k=iwae_k
    )
    paths = write_study(study, out_dir)
    console.print(study.table_markdown())
    m = study.metrics[next(iter(study.metrics))]
    verdict = "reproduced" if m.auroc < 0.5 else "NOT reproduced"
    console.print(
        f"[bold]AUROC of -log p(x), FashionMNIST (in) vs MNIST (OOD): {m.auroc:.3f}"
        f" -> the paper's failure is {verdict} (< 0.5 means MNIST looks *more* "
        "in-distribution).[/]"
    )
    for name, path in paths.items():
        console.print(f"{name}: {path}")


@app.command()
@user_errors
def predict(
    run_dir: Annotated[
        Path, typer.Argument(help="A classifier run (e.g. `dgmood train cnn --dataset mnist`).")
    ],
    images: Annotated[
        list[Path], typer.Argument(help="Image files (PNG, JPEG, ...; any size, colour or gray).")
    ],
    invert: Annotated[
        bool | None,
        typer.Option(
            "--invert/--no-invert",
            help="Force MNIST's "
            "white-on-black inversion on or off (default: "
            "auto-detect a bright background).",
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            help="Folder for the post's figure per image: "
            "expected (uniform) vs actual probabilities."
        ),
    ] = None,
) -> None:
    """Class probabilities of any photo, after the documented MNIST-ify path."""
    import torch

    from dgmood.data.datasets import load_user_images
    from dgmood.data.dequantize import to_model_input
    from dgmood.models.base import Classifier
    from dgmood.training import load_run

    run = load_run(run_dir)
    if not isinstance(run.model, Classifier):
        raise ValueError(f"{run_dir} holds a {type(run.model).__name__}, not a classifier")
    data = run.config.data
    batch = load_user_images(list(images), data.channels, data.image_size, invert)
    with torch.no_grad():
        probs = torch.softmax(run.model(to_model_input(batch, run.model.input_spec)), dim=1)
    table = Table("image", "predicted", "confidence", "softmax over classes 0..K-1")
    table.columns[0].overflow = "fold"
    table.columns[3].overflow = "fold"
    for path, p in zip(images, probs, strict=True):
        table.add_row(
            path.name,
            str(int(p.argmax())),
            f"{float(p.max()):.4f}",
            " ".join(f"{float(v):.3f}" for v in p),
        )
    console.print(table)
    if plot is not None:
        from dgmood.reporting.classifier_plots import plot_class_probabilities

        for path, image, p in zip(images, batch, probs, strict=True):
            out = plot_class_probabilities(
                p.numpy(),
                plot / f"{path.stem}_probabilities.png",
                image=image.numpy(),
                title=path.name,
            )
            console.print(f"figure: {out}")


@reproduce_app.command("chicken")
@user_errors
def reproduce_chicken(
    classifier: Annotated[
        str, typer.Option(help="Classifier model (cnn, cnn-plain).")
    ] = "cnn-plain",
    vae: Annotated[
        str, typer.Option(help="VAE model trained on MNIST for the ELBO.")
    ] = "vae-bernoulli",
    preset: Annotated[str, typer.Option(help="Size preset: tiny, cpu or paper.")] = "cpu",
    steps: Annotated[int | None, typer.Option(help="Override both models' training steps.")] = None,
    classifier_steps: Annotated[
        int | None, typer.Option(help="Override the classifier's training steps.")
    ] = None,
    vae_steps: Annotated[
        int | None, typer.Option(help="Override the VAE's training steps.")
    ] = None,
    photo: Annotated[
        list[Path] | None,
        typer.Option(
            help="Your own photo(s) to pass through (default: scikit-image's bundled photos)."
        ),
    ] = None,
    out_dir: Annotated[Path, typer.Option(help="Folder for the runs and the report.")] = Path(
        "reports/chicken"
    ),
    limit: Annotated[int, typer.Option(help="Cap each test set (0 = all 10,000).")] = 0,
    upscale: Annotated[
        str,
        typer.Option(help="28 -> 32 pixels: 'resize' (the post's footnote 2) or 'pad'."),
    ] = "resize",
    resume: Annotated[bool, typer.Option(help="Resume interrupted runs in OUT_DIR.")] = False,
    data_dir: DataDir = None,
    mirror: Mirror = None,
    download: Download = False,
    device: Device = None,
) -> None:
    """The chicken post: an MNIST CNN is sure photos and clothes are digits; a VAE is not."""
    import dataclasses

    from PIL import Image

    from dgmood.data.datasets import load_user_images
    from dgmood.evaluation.chicken import bundled_photos, chicken_study, write_chicken_study
    from dgmood.models.base import Classifier, DensityModel
    from dgmood.models.registry import build_model
    from dgmood.presets import run_preset
    from dgmood.training import load_run
    from dgmood.training.loop import train_or_reuse

    sources = _sources(data_dir, mirror, download)
    runs = {}
    for role, name in (("classifier", classifier), ("vae", vae)):
        cfg = run_preset(name, preset, "mnist")
        wanted = {"classifier": Classifier, "vae": DensityModel}[role]
        if not isinstance(build_model(cfg.model, cfg.data), wanted):
            raise ValueError(f"--{role} {name} is not a {wanted.__name__}")
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, upscale=upscale))
        role_steps = {"classifier": classifier_steps, "vae": vae_steps}[role] or steps
        if role_steps is not None:
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=role_steps))
        train_or_reuse(cfg, out_dir / role, sources=sources, resume=resume, device=device)
        runs[role] = load_run(out_dir / role)
    if photo:
        photo_files = list(photo)
    else:  # write the bundled photos to files: they take the same path as a user's photo
        photo_dir = out_dir / "photos"
        photo_dir.mkdir(parents=True, exist_ok=True)
        photo_files = []
        for name, array in bundled_photos().items():
            Image.fromarray(array).save(photo_dir / f"{name}.png")
            photo_files.append(photo_dir / f"{name}.png")
    data = runs["classifier"].config.data
    photo_tensors = dict(
        zip(
            [p.stem for p in photo_files],
            load_user_images(photo_files, data.channels, data.image_size),
            strict=True,
        )
    )
    study, arrays = chicken_study(
        runs["classifier"], runs["vae"], photo_tensors, sources=sources, limit=limit
    )
    paths = write_chicken_study(study, arrays, photo_tensors, runs["vae"], out_dir)
    console.print(study.table_markdown())
    for name, path in paths.items():
        console.print(f"{name}: {path}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

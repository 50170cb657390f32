"""The memory-mapped uint8 store: written once, checksummed, rebuilt when its sources change,
and batch-for-batch the same training run as the in-memory set."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dgmood.config import DataConfig, ExecutionConfig, RunConfig, TrainConfig
from dgmood.data import CorruptDatasetError, ImageSet, load_dataset
from dgmood.data.loading import DataSources
from dgmood.data.store import open_store, write_store
from dgmood.models.registry import resolve_model
from dgmood.runs import MODEL_FILE, read_metrics
from dgmood.training import train


def memory_mapped_from(tensor: torch.Tensor, file: Path) -> bool:
    """Whether ``tensor``'s memory lies in a mapping of ``file`` (Linux's /proc/self/maps)."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc/self/maps (Linux) to see memory mappings")
    pointer, target = tensor.data_ptr(), os.path.realpath(file)
    for line in maps.read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= pointer < end:
                return True
    return False


def _set(n: int = 10, seed: int = 0) -> ImageSet:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 8, 8), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 5, (n,), generator=generator)
    return ImageSet("toy", "test", images, labels, title="Toy test", partial=True)


def test_store_round_trip_is_memory_mapped(tmp_path: Path) -> None:
    original = _set()
    pieces = [original.with_images(original.images[:4], original.labels[:4]),
              original.with_images(original.images[4:], original.labels[4:])]  # fmt: skip
    write_store(tmp_path / "s", pieces, len(original), source="v1")
    stored = open_store(tmp_path / "s", source="v1")
    assert stored is not None
    assert torch.equal(stored.images, original.images) and torch.equal(
        stored.labels, original.labels
    )
    assert stored.label == "Toy test (first 10)" == original.label
    assert memory_mapped_from(stored.images, tmp_path / "s" / "images.npy")
    header = json.loads((tmp_path / "s" / "store.json").read_text())
    assert header["images"]["shape"] == [10, 3, 8, 8] and header["images"]["dtype"] == "uint8"
    assert open_store(tmp_path / "s", source="v2") is None  # made from other files: rebuild
    assert open_store(tmp_path / "elsewhere") is None
    assert not list((tmp_path / "s").glob(".*"))  # no temporary files left


def test_a_corrupt_store_file_is_one_clear_error(tmp_path: Path) -> None:
    write_store(tmp_path / "s", [_set()], 10, source="v1")
    images = tmp_path / "s" / "images.npy"
    data = bytearray(images.read_bytes())
    data[-5] ^= 0x10  # one pixel bit, after the .npy header
    images.write_bytes(bytes(data))
    with pytest.raises(CorruptDatasetError, match=r"images\.npy is corrupt.*sha256.*delete"):
        open_store(tmp_path / "s")
    images.write_bytes(bytes(data[:-100]))  # truncated: caught without the checksum too
    with pytest.raises(CorruptDatasetError, match=r"images\.npy is corrupt"):
        open_store(tmp_path / "s", verify=False)
    (tmp_path / "s" / "store.json").write_text("{not json")
    with pytest.raises(CorruptDatasetError, match=r"store\.json is corrupt"):
        open_store(tmp_path / "s")


def test_write_refuses_a_wrong_count(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not the 11"):
        write_store(tmp_path / "s", [_set()], 11, source="v1")
    assert not (tmp_path / "s" / "store.json").exists()


def _cifar_fixture(root: Path, test_file: str, n_test: int) -> None:
    rng = np.random.default_rng(5)
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in [*((f"data_batch_{i}.bin", 3) for i in range(1, 6)), (test_file, n_test)]:
        records = rng.integers(0, 256, (n, 3073), dtype=np.uint8)
        records[:, 0] %= 10
        (folder / name).write_bytes(records.tobytes())


def test_storage_modes_and_a_store_that_follows_its_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DGMOOD_MIRROR")
    _cifar_fixture(tmp_path, "test_batch_first1000.bin", 2)
    load = dict(data_dir=tmp_path, verify=False)
    memory = load_dataset("cifar10", "test", storage="memory", **load)
    store = tmp_path / "dgmood-store" / "cifar10" / "test"
    assert not store.exists()
    auto = load_dataset("cifar10", "test", storage="auto", **load)  # small: stays in memory
    assert not store.exists() and not memory_mapped_from(auto.images, store / "images.npy")
    mapped = load_dataset("cifar10", "test", storage="memmap", **load)
    assert memory_mapped_from(mapped.images, store / "images.npy")
    assert torch.equal(mapped.images, memory.images) and mapped.label == memory.label
    assert mapped.label == "CIFAR-10 test (first 2)"
    # auto uses a store that exists; slices (heads, holdouts) stay mapped
    again = load_dataset("cifar10", "test", storage="auto", **load).head(1)
    assert memory_mapped_from(again.images, store / "images.npy")
    holdout = load_dataset("cifar10", "train-holdout", storage="memmap", **load)
    assert len(holdout) == 1 and memory_mapped_from(holdout.images, train_store_file(tmp_path))
    # the full test file arrives: the store is rebuilt from it, the label follows
    _cifar_fixture(tmp_path, "test_batch.bin", 4)
    full = load_dataset("cifar10", "test", storage="memmap", **load)
    assert len(full) == 4 and full.label == "cifar10-test"
    # a split larger than the threshold is written to a store under "auto"
    big = load_dataset("cifar10", "train", storage="auto", memmap_above_bytes=100, **load)
    assert memory_mapped_from(big.images, train_store_file(tmp_path))
    monkeypatch.setenv("DGMOOD_STORAGE", "mmap")
    with pytest.raises(ValueError, match=r"\$DGMOOD_STORAGE must be one of auto, memory, memmap"):
        load_dataset("cifar10", "test", **load)


def train_store_file(root: Path) -> Path:
    return root / "dgmood-store" / "cifar10" / "train" / "images.npy"


def test_imagenet32_streams_into_the_store(tmp_path: Path) -> None:
    folder = tmp_path / "imagenet32"
    folder.mkdir()
    rng = np.random.default_rng(6)
    for i, n in ((1, 3), (2, 2)):
        np.savez(folder / f"train_data_batch_{i}.npz",
                 data=rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 labels=rng.integers(1, 1001, n))  # fmt: skip
    memory = load_dataset("imagenet32", "train", data_dir=tmp_path, storage="memory")
    mapped = load_dataset(
        "imagenet32", "train", data_dir=tmp_path, storage="auto", memmap_above_bytes=3 * 3072
    )
    assert torch.equal(memory.images, mapped.images) and torch.equal(memory.labels, mapped.labels)
    store = tmp_path / "dgmood-store" / "imagenet32" / "train" / "images.npy"
    assert memory_mapped_from(mapped.images, store)


def _tiny_glow_on_cifar(steps: int = 4) -> RunConfig:
    model = dataclasses.replace(resolve_model("glow", "tiny"), n_steps=2, hidden_channels=8)
    data = DataConfig(dataset="cifar10", channels=3, train_limit=128, val_size=16)
    train_cfg = TrainConfig(
        steps=steps, batch_size=8, warmup_steps=2, eval_every=2, checkpoint_every=steps,
        log_every=1,
    )  # fmt: skip
    return RunConfig(
        model=model, data=data, train=train_cfg, execution=ExecutionConfig(channels_last=False)
    )


@pytest.mark.slow
def test_training_from_the_store_is_bit_identical(mirror: Path, tmp_path: Path) -> None:
    if not (mirror / "cifar10" / "cifar-10-batches-bin" / "data_batch_1.bin").exists():
        pytest.skip(f"the CIFAR-10 binary files are not in the mirror ({mirror / 'cifar10'})")
    runs = {}
    data_dir = tmp_path / "data"
    for storage in ("memory", "memmap"):
        sources = DataSources(data_dir=str(data_dir), mirror=str(mirror), storage=storage)
        if storage == "memmap":  # the run really reads the mapped file
            train_set = sources.load_like("cifar10", "train", _tiny_glow_on_cifar().data)
            assert memory_mapped_from(train_set.images, train_store_file(data_dir))
        run_dir = tmp_path / storage
        train(_tiny_glow_on_cifar(), run_dir, sources=sources, device="cpu", progress=False)
        runs[storage] = run_dir
    keys = ("step", "loss", "val_bpd", "grad_norm")
    logs = [[{k: r[k] for k in keys if k in r} for r in read_metrics(runs[s])] for s in runs]
    assert logs[0] == logs[1] and len(logs[0]) >= 6
    weights = [load_file(str(runs[s] / MODEL_FILE)) for s in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

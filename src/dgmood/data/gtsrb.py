"""GTSRB, the German Traffic Sign Recognition Benchmark: its labelled test split, as a colour
OOD set for CIFAR-10 models (Serra et al. 2020's "TrafficSign").

torchvision's layout and reader (``torchvision.datasets.GTSRB(root, split="test")``):
``gtsrb/GT-final_test.csv`` (the official ground truth, ``Filename;...;ClassId``) and
``gtsrb/GTSRB/Final_Test/Images/00000.ppm`` .. ``12629.ppm``. Read from the data directory,
else in place from a mirror's ``gtsrb/`` folder (nothing is copied); ``--download`` uses
torchvision's downloader, which checks the official archives' md5s. The extracted images have
no published checksums; an unreadable or missing image is named in the error.

Every image is resized whole to 32x32 (margins included, aspect ratio not kept; PIL's
antialiased bilinear filter), the geometry the copies in the team mirror already have: those
were resized to 32x32 upstream with OpenCV's bilinear ``cv2.resize`` (the original 15-266 px
images could not be obtained; ../shared/data/SOURCES.md), so there they pass unchanged.

References: Stallkamp et al., "Man vs. computer: Benchmarking machine learning algorithms for
traffic sign recognition", Neural Networks 2012.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.datasets as tvd
from PIL import Image

from dgmood.data.errors import CorruptDatasetError
from dgmood.data.imageset import ImageSet
from dgmood.data.registry import LoadRequest, not_found

GTSRB_SIZE = 32  # side every image is resized to
GTSRB_CLASSES = 43


def load_gtsrb(req: LoadRequest) -> ImageSet:
    if req.split != "test":
        raise ValueError(f"gtsrb has one split here, test, not {req.split!r}")
    root = req.root
    if not (root / "gtsrb" / "GT-final_test.csv").exists():
        if req.mirror is not None and (req.mirror / "gtsrb" / "GT-final_test.csv").exists():
            root = req.mirror
        elif req.download:
            tvd.GTSRB(str(root), split="test", download=True)
        else:
            raise not_found("gtsrb", root / "gtsrb")
    try:
        samples = tvd.GTSRB(str(root), split="test")._samples
    except (RuntimeError, KeyError, ValueError, OSError) as err:
        raise CorruptDatasetError(f"cannot read gtsrb from {root / 'gtsrb'}: {err}") from err
    if not samples:
        raise CorruptDatasetError(f"{root / 'gtsrb' / 'GT-final_test.csv'} lists no images")
    images = np.empty((len(samples), 3, GTSRB_SIZE, GTSRB_SIZE), dtype=np.uint8)
    labels = np.empty(len(samples), dtype=np.int64)
    for i, (path, class_id) in enumerate(samples):
        try:
            with Image.open(path) as sign:
                rgb = sign.convert("RGB")
                if rgb.size != (GTSRB_SIZE, GTSRB_SIZE):
                    rgb = rgb.resize((GTSRB_SIZE, GTSRB_SIZE), Image.Resampling.BILINEAR)
                images[i] = np.asarray(rgb).transpose(2, 0, 1)
        except (OSError, ValueError, SyntaxError) as err:
            raise CorruptDatasetError(
                f"{path} cannot be read as an image ({err}); copy a good file in its place"
            ) from err
        if not 0 <= class_id < GTSRB_CLASSES:
            raise CorruptDatasetError(f"{path}: ClassId {class_id} is not in 0..42")
        labels[i] = class_id
    return ImageSet("gtsrb", "test", torch.from_numpy(images), torch.from_numpy(labels))

"""Models: what an inference actor loads once and runs on batches of frames.

A model is anything with a `name`, a `schema` (the pyarrow fields of its records) and
`predict(images, source_size) -> records`, one dict per output row, each with `frame` (the
position of its image in the batch). The built-in one is object detection with transformers
(AutoModelForObjectDetection + AutoImageProcessor, from a model id or a local directory);
FRAMEFLEET_MODEL_PLUGIN="module:factory" plugs in another (factory(settings) -> model).

The weights are pinned once per fleet, by its driver (`pin_weights`): a hub model to the
commit its revision names then (the inference actors load that commit), a local directory
to a digest of its files (an inference actor whose directory holds other weights refuses to
start). The pin is in the configuration hash, so retrained weights under the same name make
new outputs, never mixed with the old ones, and old outputs do not count as done for them.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from framefleet.settings import ModelSettings

log = logging.getLogger(__name__)
_COMMIT = re.compile(r"[0-9a-f]{40}")


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what to do instead."""


_OPTIONS = (
    "Without network access to the Hugging Face hub, set FRAMEFLEET_MODEL to a local"
    " directory written by save_pretrained, or FRAMEFLEET_RANDOM_WEIGHTS=1 to run a randomly"
    " initialised DETR-R50 (a smoke run: its detections mean nothing)"
)


def pin_weights(settings: ModelSettings) -> ModelSettings:
    """The settings with `weights` set to what identifies the weights now: a local
    directory's digest (`sha256:...`), or a hub model's commit (also set as its `revision`,
    so that every actor loads that one). A plugin's or random weights are named by the
    settings already. Weights that cannot be identified here (a directory or hub cache only
    the GPU nodes have) are left unpinned, with a warning."""
    if settings.plugin or settings.random_weights or settings.weights:
        return settings
    path = Path(settings.model)
    if path.is_dir():
        return replace(settings, weights=weights_digest(path))
    if path.is_absolute() or settings.model.startswith("."):
        log.warning("model %s is not on this node: its weights are not pinned", settings.model)
        return settings
    commit = _hub_commit(settings.model, settings.revision)
    if commit is None:
        log.warning(
            "cannot tell which commit of %s (revision %s) to use from this node: its weights"
            " are not pinned (set FRAMEFLEET_MODEL_REVISION to a commit)",
            settings.model,
            settings.revision or "main",
        )
        return settings
    return replace(settings, revision=commit, weights=commit)


def weights_digest(directory: Path) -> str:
    """A digest of a model directory's files (names, sizes and bytes; hidden ones left out)."""
    digest = hashlib.sha256()
    try:
        files = sorted(
            p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".")
        )
        for path in files:
            digest.update(f"{path.relative_to(directory)}\0{path.stat().st_size}\0".encode())
            with path.open("rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
    except OSError as exc:
        raise ModelLoadError(f"cannot read model directory {directory}: {exc}") from None
    return "sha256:" + digest.hexdigest()


def _hub_commit(model: str, revision: str | None) -> str | None:
    """The commit `revision` (default main) of a hub model names: the hub's answer, or else
    what the local cache recorded; None when neither knows."""
    if revision and _COMMIT.fullmatch(revision):
        return revision
    from huggingface_hub import HfApi, snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if not offline:
        with contextlib.suppress(Exception):  # no network, no such model: the cache then
            sha = HfApi().model_info(model, revision=revision, timeout=10).sha
            if sha:
                return str(sha)
    with contextlib.suppress(Exception):
        path = snapshot_download(model, revision=revision, local_files_only=True)
        return Path(path).name if _COMMIT.fullmatch(Path(path).name) else None
    return None


def preflight(settings: ModelSettings) -> None:
    """Before a fleet starts on this machine: ModelLoadError (with what to do) when its
    inference actors could not load the model, because a local directory is missing, or a
    hub model is neither in the Hugging Face cache nor reachable. Without it, a fleet
    without network spent minutes of download timeouts before it said so. A plugin's or
    random weights are not checked here."""
    if settings.plugin or settings.random_weights:
        return
    model, path = settings.model, Path(settings.model)
    if path.is_dir():
        return
    if path.is_absolute() or settings.model.startswith("."):
        raise ModelLoadError(f"cannot load model {model!r} (no such directory). {_OPTIONS}")
    from huggingface_hub import HfApi, snapshot_download

    with contextlib.suppress(Exception):
        snapshot_download(model, revision=settings.revision, local_files_only=True)
        return  # in the cache
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        reason = "not in the Hugging Face cache, and HF_HUB_OFFLINE is set"
    else:
        try:
            HfApi().model_info(model, revision=settings.revision, timeout=10)
            return  # the inference actors download it
        except Exception as exc:
            reason = f"not in the Hugging Face cache, and the hub does not answer: {exc}"
    raise ModelLoadError(f"cannot load model {model!r} ({reason}). {_OPTIONS}")


def check_weights(settings: ModelSettings) -> None:
    """Refuses (ModelLoadError) a local directory whose weights are not the pinned ones."""
    if not settings.weights.startswith("sha256:") or settings.plugin:
        return
    found = weights_digest(Path(settings.model))
    if found != settings.weights:
        raise ModelLoadError(
            f"the weights in {settings.model} changed since this fleet pinned them"
            f" ({settings.weights[:19]}..., now {found[:19]}...): a new fleet (restart the"
            " coordinator) pins the new ones; this one would mix the two in its outputs"
        )


class FrameModel(Protocol):
    name: str
    schema: pa.Schema  # the fields of each record, besides `frame`

    def predict(self, images: np.ndarray, source_size: tuple[int, int]) -> list[dict[str, Any]]:
        """Records for a batch of RGB frames (n, h, w, 3); `source_size` is the (width,
        height) of the video's frames, the space boxes are reported in."""
        ...


DETECTION_SCHEMA = pa.schema(
    [
        ("label_id", pa.int32()),
        ("label", pa.string()),
        ("score", pa.float32()),
        ("x0", pa.float32()),
        ("y0", pa.float32()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
    ]
)


def load_model(settings: ModelSettings) -> FrameModel:
    if settings.plugin:
        module_name, _, factory = settings.plugin.partition(":")
        try:
            module = importlib.import_module(module_name)
            model: FrameModel = getattr(module, factory or "load")(settings)
        except (ImportError, AttributeError) as exc:
            raise ModelLoadError(f"model plugin {settings.plugin!r}: {exc}") from exc
        return model
    return DetectionModel(settings)


def pick_device(wanted: str) -> str:
    import torch

    if wanted == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device cuda was asked for, but torch sees no CUDA device")
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


class DetectionModel:
    """Object detection with a transformers model (DETR by default)."""

    schema = DETECTION_SCHEMA

    def __init__(self, settings: ModelSettings) -> None:
        import torch
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self.settings = settings
        self.device = pick_device(settings.device)
        if self.device == "cpu":
            torch.set_num_threads(settings.torch_threads)
        if settings.random_weights:
            self.model, self.processor = random_detr_resnet50()
            self.name = f"{settings.model}:random-weights"
        else:
            check_weights(settings)
            self.model, self.processor = _from_pretrained(settings.model, settings.revision)
            self.name = settings.model
        self.model.eval().to(self.device)
        self.labels = {int(k): str(v) for k, v in self.model.config.id2label.items()}
        self._dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings.precision)

    def inputs(self, images: np.ndarray) -> tuple[Any, Any]:
        """Pixel values and mask on the model's device: with torch where the image processor's
        steps are ones torch reproduces (DETR's size rule, bilinear resize, rescale,
        normalize; a test holds it to the processor), else with the processor itself."""
        import torch

        plan = self._torch_plan(images.shape[1], images.shape[2])
        if plan is None:
            inputs = self.processor(images=list(images), return_tensors="pt")
            return inputs["pixel_values"].to(self.device), inputs["pixel_mask"].to(self.device)
        size, scale, mean, std = plan
        x = torch.tensor(images, device=self.device).permute(0, 3, 1, 2).float()
        if size != tuple(x.shape[-2:]):
            x = torch.nn.functional.interpolate(
                x, size=size, mode="bilinear", antialias=True, align_corners=False
            )
        if scale is not None:
            x = x * scale
        if mean is not None and std is not None:
            x = (x - torch.tensor(mean, device=self.device).view(1, 3, 1, 1)) / torch.tensor(
                std, device=self.device
            ).view(1, 3, 1, 1)
        mask = torch.ones((len(images), *size), dtype=torch.long, device=self.device)
        return x, mask

    def _torch_plan(self, height: int, width: int) -> tuple[tuple[int, int], Any, Any, Any] | None:
        from transformers.image_transforms import get_size_with_aspect_ratio

        p = self.processor
        if self.settings.preprocess != "torch" or not type(p).__name__.startswith(
            "DetrImageProcessor"
        ):
            return None
        if int(getattr(p, "resample", 2)) != 2:  # only bilinear is reproduced
            return None
        size = p.size
        if not p.do_resize:
            target = (height, width)
        elif size.shortest_edge and size.longest_edge:
            target = tuple(
                get_size_with_aspect_ratio((height, width), size.shortest_edge, size.longest_edge)
            )
        elif size.height and size.width:
            target = (size.height, size.width)
        else:
            return None
        scale = p.rescale_factor if p.do_rescale else None
        mean, std = (p.image_mean, p.image_std) if p.do_normalize else (None, None)
        return (int(target[0]), int(target[1])), scale, mean, std

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        import torch

        if self._dtype is None:
            yield
            return
        with torch.autocast(self.device, dtype=self._dtype):
            yield

    def predict(self, images: np.ndarray, source_size: tuple[int, int]) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        step = self.settings.batch_size
        for start in range(0, len(images), step):
            records += self._predict(images[start : start + step], source_size, start)
        return records

    def _predict(
        self, images: np.ndarray, source_size: tuple[int, int], offset: int
    ) -> list[dict[str, Any]]:
        import torch

        width, height = source_size
        with torch.inference_mode():
            pixel_values, pixel_mask = self.inputs(images)
            with self._autocast():
                out = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask)
            # post-processing in fp32 whatever the forward pass ran in
            outputs = SimpleNamespace(logits=out.logits.float(), pred_boxes=out.pred_boxes.float())
            results = self.processor.post_process_object_detection(
                outputs,
                threshold=self.settings.score_threshold,
                target_sizes=[(height, width)] * len(images),
            )
        records = []
        for i, result in enumerate(results):
            boxes = result["boxes"].cpu().numpy()
            for label, score, box in zip(
                result["labels"].tolist(), result["scores"].tolist(), boxes, strict=True
            ):
                records.append(
                    {
                        "frame": offset + i,
                        "label_id": label,
                        "label": self.labels.get(label, str(label)),
                        "score": score,
                        "x0": box[0],
                        "y0": box[1],
                        "x1": box[2],
                        "y1": box[3],
                    }
                )
        return records


def _from_pretrained(model: str, revision: str | None = None) -> tuple[Any, Any]:
    """A local directory, else the Hugging Face cache, else (unless HF_HUB_OFFLINE) the hub;
    of a hub model, `revision` (a branch, tag or commit; default main)."""
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    reason = ""
    for local_only in (True,) if offline else (True, False):
        try:
            processor = AutoImageProcessor.from_pretrained(
                model, revision=revision, local_files_only=local_only
            )
            detector = AutoModelForObjectDetection.from_pretrained(
                model, revision=revision, local_files_only=local_only
            )
            return detector, processor
        except OSError as exc:
            reason = str(exc).splitlines()[0]
    raise ModelLoadError(f"cannot load model {model!r} ({reason}). {_OPTIONS}")


def detr_config(*, tiny: bool = False, num_labels: int = 91) -> Any:
    """A DETR configuration with a transformers ResNet backbone (no timm, no download):
    DETR-R50's architecture, or a tiny one for tests."""
    from transformers import DetrConfig, ResNetConfig

    labels = {i: f"class_{i}" for i in range(num_labels)}
    if tiny:
        backbone = ResNetConfig(
            embedding_size=8,
            hidden_sizes=[8, 16],
            depths=[1, 1],
            layer_type="basic",
            out_features=["stage2"],
        )
        sizes: dict[str, Any] = dict(
            d_model=16,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            num_queries=10,
        )
    else:
        backbone = ResNetConfig(
            embedding_size=64,
            hidden_sizes=[256, 512, 1024, 2048],
            depths=[3, 4, 6, 3],
            layer_type="bottleneck",
            out_features=["stage4"],
        )
        sizes = {}
    return DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=backbone,
        num_labels=num_labels,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
        **sizes,
    )


def random_detr_resnet50(seed: int = 0) -> tuple[Any, Any]:
    """DETR-R50 with random weights and the standard DETR image processor."""
    import torch
    from transformers import DetrForObjectDetection
    from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil

    torch.manual_seed(seed)
    return DetrForObjectDetection(detr_config()), DetrImageProcessorPil()

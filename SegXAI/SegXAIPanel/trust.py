"""Which models the user trusted, per machine and per model content, never in the scene.

Loading a pickled model, a MONAI bundle or an nnU-Net checkpoint executes code from its files. Trust given to one
model must not carry over to another one, nor to the same path after its files changed, nor travel inside a shared
.mrb scene: it is kept in a JSON file beside Slicer's user settings, keyed by the model's resolved path and a
SHA-256 over its files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def model_digest(path: str | Path) -> str:
    """SHA-256 over a model file, or over every file of a model folder (relative names and contents, sorted)."""
    path = Path(path).resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode() + b"\0")
        file_digest = hashlib.sha256()
        with open(file, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                file_digest.update(block)
        digest.update(file_digest.digest())
    return digest.hexdigest()


class TrustStore:
    """{resolved model path: digest} in a JSON file; a model is trusted only while its files are unchanged."""

    def __init__(self, file: str | Path):
        self.file = Path(file)

    def _read(self) -> dict:
        try:
            return json.loads(self.file.read_text())
        except (OSError, ValueError):
            return {}

    def is_trusted(self, model: str | Path) -> bool:
        key = str(Path(model).resolve())
        known = self._read().get(key)
        return known is not None and Path(model).exists() and known == model_digest(model)

    def trust(self, model: str | Path) -> None:
        entries = self._read()
        entries[str(Path(model).resolve())] = model_digest(model)
        self.file.parent.mkdir(parents=True, exist_ok=True)
        self.file.write_text(json.dumps(entries, indent=1))

    def untrusted(self, models: list[str], descriptions: dict[str, dict]) -> list[str]:
        """Models whose format executes code on load (as the engine described them) and that were not trusted yet."""
        return [m for m in models if descriptions.get(m, {}).get("needs_trust", True) and not self.is_trusted(m)]

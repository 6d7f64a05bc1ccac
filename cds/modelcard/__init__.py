"""The model card of the serving model, read without importing torch.

A checkpoint directory (``CDSFUSION_MODEL_DIR``, see ``fusion/checkpoint.py``) holds
``model.json`` (the manifest: name, version, sha256 of the weights, config, model card)
and ``MODEL_CARD.md``. The web process only parses these two files, so cards and
RiskAssessments can name and link the model while torch stays out of the process.

The card is served at ``GET /models/{name}/{version}`` (HTML for browsers, markdown for
``Accept: text/markdown``; :mod:`cds.modelcard.routes`), the URL that CDS Hooks
``Card.source.url`` and the FHIR ``Device`` point to.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

logger = logging.getLogger(__name__)

MANIFEST_FILE = "model.json"
CARD_FILE = "MODEL_CARD.md"


@dataclass(frozen=True)
class ModelCard:
    """What the outputs say about a model.

    Attributes:
        name, version, sha256: the checkpoint's identity (sha256 of its weights).
        card: the model card as stored in the manifest (intended use, training data, ...).
        markdown: ``MODEL_CARD.md``, empty when the file is absent.
    """

    name: str
    version: str
    sha256: str | None
    card: dict[str, Any] = field(default_factory=dict)
    markdown: str = ""

    @property
    def synthetic_training_data(self) -> bool:
        """Whether the card says the model was trained on synthetic data."""
        training = self.card.get("training_data")
        if isinstance(training, dict) and str(training.get("kind", "")).lower() == "synthetic":
            return True
        return "synthetic data" in str(self.card.get("intended_use", "")).lower()


def model_card_path(name: str, version: str) -> str:
    """The path of a model's card on this engine's HTTP port."""
    return f"/models/{quote(name, safe='')}/{quote(version, safe='')}"


def read_model_card(directory: Path) -> ModelCard | None:
    """Parse a checkpoint directory's manifest and card; ``None`` when unreadable.

    Args:
        directory: the checkpoint directory (``Settings.model_path``).
    """
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not manifest.get("name") or not manifest.get("version"):
        return None
    try:
        markdown = (directory / CARD_FILE).read_text(encoding="utf-8")
    except OSError:
        markdown = ""
    card = manifest.get("model_card")
    return ModelCard(
        name=str(manifest["name"]),
        version=str(manifest["version"]),
        sha256=str(manifest["sha256"]) if manifest.get("sha256") else None,
        card=card if isinstance(card, dict) else {},
        markdown=markdown,
    )


class ModelCardSource:
    """The serving model's card, re-read when ``model.json`` changes on disk.

    Args:
        directory: the checkpoint directory.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._lock = threading.Lock()
        self._stamp: float | None = None
        self._card: ModelCard | None = None

    def current(self) -> ModelCard | None:
        """The card of the model in the directory now, or ``None`` when there is none."""
        try:
            stamp = (self._directory / MANIFEST_FILE).stat().st_mtime
        except OSError:
            return None
        with self._lock:
            if stamp != self._stamp:
                self._card = read_model_card(self._directory)
                self._stamp = stamp
            return self._card

    def find(self, name: str, version: str) -> ModelCard | None:
        """The card for ``name`` ``version`` if that is the model in the directory."""
        card = self.current()
        if card is not None and card.name == name and card.version == version:
            return card
        return None

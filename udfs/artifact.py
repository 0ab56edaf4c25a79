"""The model artifact: ONNX model, vocabularies, candidate tables, manifest.

The job refuses an artifact whose files do not match the manifest's sha256s or
whose feature layout differs from this code's: a silent mismatch would rank
with garbage, which is worse than not starting.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from udfs.candidates import CandidateTables
from udfs.features import DENSE_FEATURES, INPUT_NAMES, Vocab
from udfs.state import StateLimits

FORMAT = "streamrec-artifact"
FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
VOCAB_FILE = "vocab.msgpack"
TABLES_FILE = "tables.msgpack"
MANIFEST_FILE = "manifest.json"


class ArtifactError(RuntimeError):
    """The artifact is missing, corrupt or incompatible with this code."""


DEFAULT_N_CANDIDATES = 100


class Manifest(dict[str, Any]):
    """The manifest's JSON map, with typed access to what the code reads from it.

    Every reader goes through these properties, so a field is decoded one way.
    """

    @property
    def model_version(self) -> str:
        return str(self["model_version"])

    @property
    def seq_len(self) -> int:
        return int(self["seq_len"])

    @property
    def training_config(self) -> dict[str, Any]:
        """The settings the model was trained with (``config`` in the file)."""
        return dict(self.get("config") or {})

    @property
    def model_config(self) -> dict[str, Any]:
        return dict(self["model_config"])

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.get("metrics") or {})

    @property
    def train_span(self) -> dict[str, Any]:
        return dict(self.get("train_span") or {})

    @property
    def until_ms(self) -> int:
        """Events before this time trained the model; later ones are held out."""
        return int(self.train_span["until_ms"])

    @property
    def n_candidates(self) -> int:
        return int(self.training_config.get("n_candidates", DEFAULT_N_CANDIDATES))

    @property
    def state_limits(self) -> StateLimits:
        """The state bounds the training data was built with; the job must use the same."""
        lim = self.training_config.get("state_limits")
        return StateLimits(**lim) if lim else StateLimits(max_seq_len=self.seq_len)


@dataclass
class Artifact:
    path: Path
    manifest: Manifest
    vocab: Vocab
    tables: CandidateTables

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def model_version(self) -> str:
        return self.manifest.model_version

    @property
    def seq_len(self) -> int:
        return self.manifest.seq_len


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_artifact(
    out_dir: str | Path,
    model_file: str | Path,
    vocab: Vocab,
    tables: CandidateTables,
    manifest: dict[str, Any],
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Write all files, then the manifest last, so a half-written dir never verifies."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)
    if Path(model_file).resolve() != (out / MODEL_FILE).resolve():
        shutil.copyfile(model_file, out / MODEL_FILE)
    (out / VOCAB_FILE).write_bytes(vocab.to_bytes())
    (out / TABLES_FILE).write_bytes(tables.to_bytes())
    names = [MODEL_FILE, VOCAB_FILE, TABLES_FILE]
    for name, src in (extra_files or {}).items():
        if Path(src).resolve() != (out / name).resolve():
            shutil.copyfile(src, out / name)
        names.append(name)
    full = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dense_features": list(DENSE_FEATURES),
        "input_names": list(INPUT_NAMES),
        **manifest,
        "files": {name: sha256_file(out / name) for name in names},
    }
    for key in ("model_version", "seq_len", "opset"):
        if key not in full:
            raise ValueError(f"manifest needs {key!r}")
    tmp = out / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(full, indent=2, sort_keys=True))
    tmp.replace(out / MANIFEST_FILE)
    return out


def read_manifest(path: str | Path) -> Manifest:
    """Parse the manifest alone, without checking files (a model directory being benchmarked)."""
    mpath = Path(path) / MANIFEST_FILE
    if not mpath.is_file():
        raise ArtifactError(f"{mpath} is missing: not a complete model artifact")
    try:
        data = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{mpath} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{mpath} is not a JSON object")
    return Manifest(data)


def verify_manifest(path: str | Path) -> Manifest:
    """The manifest of a complete artifact whose files match it and this code's features."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(
            f"model artifact directory {path} does not exist; train one with "
            f"`streamrec train --events FILE --out {path}` or set ranking.artifact_dir"
        )
    mpath = path / MANIFEST_FILE
    manifest = read_manifest(path)
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{mpath}: format {manifest.get('format')!r} v{manifest.get('format_version')!r}, "
            f"this job reads {FORMAT!r} v{FORMAT_VERSION}"
        )
    for name, expected in manifest.get("files", {}).items():
        f = path / name
        if not f.is_file():
            raise ArtifactError(f"artifact file {f} listed in the manifest is missing")
        actual = sha256_file(f)
        if actual != expected:
            raise ArtifactError(
                f"artifact file {f} does not match its manifest: sha256 {actual[:12]}..., "
                f"manifest says {expected[:12]}... (corrupt or replaced)"
            )
    if MODEL_FILE not in manifest.get("files", {}):
        raise ArtifactError(f"{mpath} lists no {MODEL_FILE}")
    if tuple(manifest.get("dense_features", ())) != DENSE_FEATURES:
        raise ArtifactError(
            f"artifact {path} was built for dense features {manifest.get('dense_features')}, "
            f"this code computes {list(DENSE_FEATURES)}; retrain the model"
        )
    return manifest


def load_artifact(path: str | Path) -> Artifact:
    p = Path(path)
    manifest = verify_manifest(p)
    try:
        vocab = Vocab.from_bytes((p / VOCAB_FILE).read_bytes())
        tables = CandidateTables.from_bytes((p / TABLES_FILE).read_bytes())
    except Exception as exc:
        raise ArtifactError(f"artifact {p}: cannot read tables: {exc}") from exc
    return Artifact(p, manifest, vocab, tables)

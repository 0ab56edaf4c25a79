"""The model artifact: ONNX model, vocabularies, candidate tables, manifest.

The job refuses an artifact whose files do not match the manifest's sha256s or
whose feature layout differs from this code's: a silent mismatch would rank
with garbage, which is worse than not starting. The manifest must have every
field the code reads; every file the loader uses must be listed and hashed; a
listed file must be a plain name for a regular file in the artifact directory
(no absolute path, ``..``, separator or symlink); and what is loaded is the very
bytes that were hashed, read once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from udfs.candidates import CandidateTables
from udfs.errors import UserError
from udfs.features import DENSE_FEATURES, INPUT_NAMES, Vocab
from udfs.state import StateLimits

FORMAT = "streamrec-artifact"
FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
VOCAB_FILE = "vocab.msgpack"
TABLES_FILE = "tables.msgpack"
MANIFEST_FILE = "manifest.json"
# Files the loader uses: each must be listed (and so hashed) in the manifest.
LOADED_FILES = (MODEL_FILE, VOCAB_FILE, TABLES_FILE)
# Fields every manifest must have: what write_artifact always writes and the loaders read.
REQUIRED_FIELDS = ("format", "format_version", "model_version", "seq_len", "opset", "dense_features", "files")
# A listed file is a plain name in the artifact directory: no separator, no leading dot.
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ArtifactError(UserError, RuntimeError):
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
    def catalog_features(self) -> bool:
        """Whether the model was trained with the catalog's brand and price features filled in;
        only then does the job fill them (``udfs.features.CATALOG_FEATURES``)."""
        return bool(self.get("catalog_features", False))

    @property
    def train_span(self) -> dict[str, Any]:
        return dict(self.get("train_span") or {})

    @property
    def until_ms(self) -> int:
        """Events before this time trained the model; later ones are held out."""
        return int(self.train_span["until_ms"])

    @property
    def covisit_window_ms(self) -> int | None:
        """The co-visitation time window the tables were counted with (None in artifacts older than it)."""
        value = self.training_config.get("covisit_window_ms")
        return None if value is None else int(value)

    @property
    def exclude_bought(self) -> bool:
        """Whether candidates leave out what the shopper bought: derived from the training log
        (``udfs.candidates.bought_items_recur``); artifacts older than the field always did."""
        return bool(self.training_config.get("exclude_bought", True))

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
    model_bytes: bytes = field(repr=False)
    """``model.onnx`` as read and hashed by :func:`load_artifact`: give these to the session,
    not :attr:`model_path`, whose content may have changed since."""
    manifest_sha256: str = ""
    """sha256 of ``manifest.json`` as read: the bytes the files were verified against."""

    @property
    def model_path(self) -> Path:
        """Where the model was read from (tools that open it again; the job uses :attr:`model_bytes`)."""
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


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a file listed in a manifest, or None for a plain file name."""
    if not isinstance(name, str) or not name:
        return "is not a non-empty string"
    if name.startswith("/") or name.startswith("\\") or re.match(r"[A-Za-z]:", name):
        return "is an absolute path"
    if "/" in name or "\\" in name:
        parts = re.split(r"[/\\]", name)
        return "has a '..' component" if ".." in parts else "has a path separator"
    if name in (".", ".."):
        return f"is {name!r}"
    if not PLAIN_NAME.fullmatch(name):
        return "is not a plain file name (letters, digits, '.', '_', '-', not starting with '.')"
    return None


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
    names = list(LOADED_FILES)
    for name, src in (extra_files or {}).items():
        if (problem := name_problem(name)) is not None:
            raise ValueError(f"artifact file name {name!r} {problem}")
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


# Fields a later step may add to a written manifest: descriptions of the artifact, never
# something a loader reads (those are fixed when the files are hashed, by write_artifact).
FIXED_FIELDS = (*REQUIRED_FIELDS, "input_names", "signature", "model_config", "config", "created_at")


def add_manifest_fields(path: str | Path, fields: dict[str, Any]) -> Manifest:
    """Add descriptive fields (``streamrec retrain``'s comparison) to a verified artifact's
    manifest, rewritten atomically. The manifest is not among the hashed files, so the
    artifact verifies as before; a field the loaders read, or one already there, is refused:
    what was verified and what is loaded must not drift apart."""
    p = Path(path)
    manifest = verify_manifest(p)
    clash = sorted(k for k in fields if k in FIXED_FIELDS or k in manifest)
    if clash:
        raise ValueError(f"{p / MANIFEST_FILE}: will not set {', '.join(map(repr, clash))} "
                         "(fixed when the artifact was written, or already there)")
    tmp = p / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps({**manifest, **fields}, indent=2, sort_keys=True))
    tmp.replace(p / MANIFEST_FILE)
    return verify_manifest(p)


def read_manifest(path: str | Path) -> Manifest:
    """Parse the manifest alone, without checking files (a model directory being benchmarked)."""
    return _read_manifest(Path(path))[0]


def manifest_sha256(path: str | Path) -> str:
    """sha256 of an artifact's ``manifest.json``: what a model announcement names, so the job
    installs the very manifest that was published (docs/operations.md 'Model registry and retraining')."""
    return _read_manifest(Path(path))[1]


def _read_manifest(path: Path) -> tuple[Manifest, str]:
    """The manifest and the sha256 of the bytes it was parsed from (read once)."""
    mpath = path / MANIFEST_FILE
    if not mpath.is_file():
        raise ArtifactError(f"{mpath} is missing: not a complete model artifact")
    raw = mpath.read_bytes()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{mpath} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{mpath} is not a JSON object")
    return Manifest(data), hashlib.sha256(raw).hexdigest()


def check_manifest(manifest: Manifest, mpath: Path) -> None:
    """Refuse a manifest that lacks a field, lists an unsafe name, or fits other code."""
    missing = [k for k in REQUIRED_FIELDS if k not in manifest]
    if missing:
        raise ArtifactError(f"{mpath} lacks required field{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(map(repr, missing))}: not an artifact this job can read")
    if manifest["format"] != FORMAT or manifest["format_version"] != FORMAT_VERSION:
        raise ArtifactError(
            f"{mpath}: format {manifest['format']!r} v{manifest['format_version']!r}, "
            f"this job reads {FORMAT!r} v{FORMAT_VERSION}"
        )
    mv, seq_len, opset = manifest["model_version"], manifest["seq_len"], manifest["opset"]
    if not isinstance(mv, str) or not mv:
        raise ArtifactError(f"{mpath}: field 'model_version' must be a non-empty string, got {mv!r}")
    for key, value in (("seq_len", seq_len), ("opset", opset)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ArtifactError(f"{mpath}: field {key!r} must be a positive integer, got {value!r}")
    files = manifest["files"]
    if not isinstance(files, dict):
        raise ArtifactError(f"{mpath}: field 'files' must map file names to sha256s, got {type(files).__name__}")
    for name, digest in files.items():
        if (problem := name_problem(name)) is not None:
            raise ArtifactError(f"{mpath}: listed file {name!r} {problem}; "
                                "artifact files must be plain names inside the artifact directory")
        if not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest):
            raise ArtifactError(f"{mpath}: listed file {name!r} has no sha256 (got {digest!r})")
    for name in LOADED_FILES:
        if name not in files:
            raise ArtifactError(f"{mpath} lists no {name}: every file the job loads must be hashed there")
    if not isinstance(manifest["dense_features"], list) or tuple(manifest["dense_features"]) != DENSE_FEATURES:
        raise ArtifactError(
            f"artifact {mpath.parent} was built for dense features {manifest['dense_features']}, "
            f"this code computes {list(DENSE_FEATURES)}; retrain the model"
        )


@contextmanager
def _open_listed(path: Path, name: str) -> Iterator[Any]:
    """Open a listed file for reading, refusing a symlink or anything but a regular file.

    ``O_NOFOLLOW`` closes the gap between the check and the open; ``O_NONBLOCK`` keeps
    a FIFO planted under a listed name from hanging the open (it is then refused).
    """
    f = path / name
    if f.is_symlink():
        raise ArtifactError(f"artifact file {f} is a symlink; artifact files must be regular files in "
                            f"{path} (copy the file in instead)")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(f, flags)
    except FileNotFoundError:
        raise ArtifactError(f"artifact file {f} listed in the manifest is missing") from None
    except OSError as exc:
        raise ArtifactError(f"artifact file {f} cannot be opened: {exc}") from exc
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ArtifactError(f"artifact file {f} is not a regular file")
        yield fh


def _verified_files(path: Path, manifest: Manifest, keep: tuple[str, ...]) -> dict[str, bytes]:
    """Hash every listed file, each opened once; return the bytes of those in ``keep``,
    the very bytes that were hashed."""
    kept: dict[str, bytes] = {}
    for name, expected in manifest["files"].items():
        with _open_listed(path, name) as fh:
            if name in keep:
                data = fh.read()
                actual = hashlib.sha256(data).hexdigest()
            else:
                h = hashlib.sha256()
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
                actual = h.hexdigest()
        if actual != expected:
            raise ArtifactError(
                f"artifact file {path / name} does not match its manifest: sha256 {actual[:12]}..., "
                f"manifest says {expected[:12]}... (corrupt or replaced)"
            )
        if name in keep:
            kept[name] = data
    return kept


def _checked(path: Path, keep: tuple[str, ...],
             expected_sha256: str | None = None) -> tuple[Manifest, dict[str, bytes], str]:
    if not path.is_dir():
        raise ArtifactError(
            f"model artifact directory {path} does not exist; train one with "
            f"`streamrec train --events FILE --out {path}` or set ranking.artifact_dir"
        )
    manifest, digest = _read_manifest(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ArtifactError(f"{path / MANIFEST_FILE} has sha256 {digest[:12]}..., the announcement says "
                            f"{expected_sha256[:12]}... (replaced since it was published)")
    check_manifest(manifest, path / MANIFEST_FILE)
    return manifest, _verified_files(path, manifest, keep), digest


def verify_manifest(path: str | Path) -> Manifest:
    """The manifest of a complete artifact whose files match it and this code's features."""
    return _checked(Path(path), ())[0]


def load_artifact(path: str | Path, manifest_sha256: str | None = None) -> Artifact:
    """Verify the artifact and load it from the bytes that were hashed (each file read once).
    ``manifest_sha256``: the manifest must be these very bytes (a model announcement's)."""
    p = Path(path)
    manifest, data, digest = _checked(p, LOADED_FILES, manifest_sha256)
    try:
        vocab = Vocab.from_bytes(data[VOCAB_FILE])
        tables = CandidateTables.from_bytes(data[TABLES_FILE])
    except Exception as exc:
        raise ArtifactError(f"artifact {p}: cannot read tables: {exc}") from exc
    return Artifact(p, manifest, vocab, tables, data[MODEL_FILE], digest)

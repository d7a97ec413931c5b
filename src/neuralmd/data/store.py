"""LabelStore: the durable home of active-learning labels, an ase.db (SQLite file, or a
PostgreSQL URL for a shared store).

Every label is written as it arrives, in its own transaction, with the round, the frame key
(a hash of elements and positions, so a frame is never labelled twice), the status (``ok`` or
``failed`` with its reason) and the labeler settings. The database's metadata names the
project, so a store from another project is refused instead of mixed in.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from pathlib import Path

import ase.db
import numpy as np
from ase import Atoms

from ..errors import InputError
from .io import _take_labels, _write_db_row

FORMAT = "neuralmd.labelstore"


def frame_key(atoms: Atoms) -> str:
    """A stable identity of a geometry: elements and positions rounded to 1e-6 Å (a coordinate
    that rounds to -0.0 counts as 0.0: adding 0.0 turns -0.0 into +0.0)."""
    h = hashlib.sha1(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update((np.round(np.asarray(atoms.positions, dtype=float), 6) + 0.0).tobytes())
    return h.hexdigest()[:20]


class LabelStore:
    """Labels of one project.

    Args:
        url: an ``.db`` path (SQLite) or ``postgresql://...``.
        project: the project name written into a new store and required of an existing one.
    """

    def __init__(self, url: str | Path, project: str) -> None:
        self.url, self.project = str(url), project
        is_file = not self.url.startswith("postgresql://")
        if is_file and Path(self.url).exists() and Path(self.url).stat().st_size > 0:
            with open(self.url, "rb") as fh:
                if fh.read(16) != b"SQLite format 3\x00":
                    raise InputError(f"{self.url}: not an SQLite database (corrupted or another kind of file)")
        try:
            self.db = ase.db.connect(self.url, type="db" if is_file else "postgresql", append=True)
            meta = self.db.metadata  # the first query: an unreachable server fails here
            if not meta:
                if len(self.db):
                    raise InputError(f"{self.url}: holds {len(self.db)} rows but no neuralmd metadata: a store from "
                                     f"another program; use another path")
                self.db.metadata = {"format": FORMAT, "project": project}
            elif meta.get("format") != FORMAT or meta.get("project") != project:
                raise InputError(f"{self.url}: field 'metadata': belongs to project {meta.get('project')!r} "
                                 f"(format {meta.get('format')!r}), not {project!r}; use another store")
        except (sqlite3.DatabaseError, json.JSONDecodeError) as exc:
            raise InputError(f"{self.url}: unreadable label store ({type(exc).__name__}: {exc})") from None
        except ModuleNotFoundError as exc:
            raise InputError(f"{self.url}: a PostgreSQL store needs the 'postgres' extra "
                             f"(pip install 'neuralmd[postgres]'): {exc}") from None
        except Exception as exc:  # psycopg2.Error and its kin, which are optional imports
            if is_file or type(exc).__module__.split(".")[0] != "psycopg2":
                raise
            shown = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", self.url)  # not the password
            raise InputError(f"{shown}: PostgreSQL store unreachable or refused "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())})") from None

    def keys(self) -> set[str]:
        """Keys of every frame already in the store (labelled or failed)."""
        return {row.get("key") for row in self.db.select(include_data=False)}

    def add(self, atoms: Atoms, key: str, round: int, labeler: dict, reason: str | None = None,
            index: int = 0) -> None:
        """Write one label (or failure) in its own transaction; ``index`` is the frame's place
        in its round's selection (labels arrive in any order; training sorts by it)."""
        frame = atoms.copy()
        frame.info = {k: v for k, v in atoms.info.items() if k in ("energy", "stress")}
        frame.info.update({"key": key, "round": int(round), "index": int(index), "status": "failed" if reason else "ok",
                           "labeler": json.dumps(labeler, sort_keys=True)})
        if reason:
            frame.info["reason"] = reason[:500]
            frame.info.pop("energy", None)
            frame.arrays.pop("forces", None)
        _write_db_row(self.db, frame)

    def frames(self, status: str = "ok", max_round: int | None = None) -> list[Atoms]:
        """Frames with the given status (``ok``: labelled, with energy and forces), in write order."""
        query = [("status", "=", status)]
        if max_round is not None:
            query.append(("round", "<=", max_round))
        out = []
        for row in self.db.select(query, sort="id"):
            atoms = _take_labels(row.toatoms())
            atoms.info.update(row.key_value_pairs)
            out.append(atoms)
        return out

    def count(self, status: str | None = None) -> int:
        return self.db.count(status=status) if status else self.db.count()

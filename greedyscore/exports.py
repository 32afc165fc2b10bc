"""Download files for scored replies: JSON (the CLI's schema) and CSV, one unguessable folder each;
folders older than `ttl_s` are pruned at each new export, so a long-lived server does not fill its disk.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import time
from os import scandir
from pathlib import Path
from typing import Any

from .render import tokens_csv
from .types import ScoredReply

EXPORT_TTL_S = 3600.0  # a download link lives this long


class Exports:
    """Writes each reply's files into `root/<random 128-bit name>/`; prunes old folders."""

    def __init__(self, root: Path | None = None, ttl_s: float = EXPORT_TTL_S) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="greedyscore-exports-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.ttl_s = ttl_s

    def write(self, reply: ScoredReply, data: dict[str, Any] | None = None) -> tuple[str, str]:
        """-> paths of tokens.json (`data`, default the reply's JSON) and tokens.csv for this reply."""
        self.prune()
        folder = self.root / secrets.token_urlsafe(16)
        folder.mkdir(mode=0o700)
        j, c = folder / "tokens.json", folder / "tokens.csv"
        j.write_text(json.dumps(data or reply.to_json(), ensure_ascii=False, indent=1), encoding="utf-8")
        c.write_text(tokens_csv(reply), encoding="utf-8", newline="")  # its "\r\n" rows as they are
        return str(j), str(c)

    def prune(self) -> None:
        """Remove folders older than ttl_s; tolerate ones that vanish meanwhile (another request pruned them)."""
        cutoff = time.time() - self.ttl_s
        try:
            entries = list(scandir(self.root))
        except FileNotFoundError:
            self.root.mkdir(parents=True, exist_ok=True)
            return
        for entry in entries:
            try:
                old = entry.stat(follow_symlinks=False).st_mtime < cutoff
            except FileNotFoundError:
                continue
            if old:
                shutil.rmtree(entry.path, ignore_errors=True)

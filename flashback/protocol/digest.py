"""File digests (INTERFACE §7): the whole-file SHA-256 and its block manifest.

Pure functions, no I/O beyond reading an already-open descriptor in
:func:`hash_fd` (which runs in a worker thread): the ``Repr-Digest`` field
(RFC 9530, an RFC 8941 dictionary of byte sequences, through ``http_sf``),
the block size rule, and a one-pass hash of the whole file and its blocks.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

import http_sf

MIB: Final = 1024 * 1024
MIN_BLOCK_BYTES: Final = MIB
MAX_BLOCKS: Final = 4096
#: one read of the hashing worker (1-8 MiB reads: hashlib drops the GIL for each)
READ_BYTES: Final = 4 * MIB
DIGEST_ALGORITHM: Final = "sha-256"
#: the longest Repr-Digest value we parse (a few algorithms at most)
MAX_FIELD_BYTES: Final = 4096


@dataclass(frozen=True)
class Manifest:
    size: int
    sha256: str  # lowercase hex of the whole file
    block_size: int
    blocks: tuple[str, ...]  # lowercase hex per block

    def to_json(self, path: str) -> dict[str, Any]:
        return {
            "path": path,
            "size": self.size,
            "sha256": self.sha256,
            "block_size": self.block_size,
            "blocks": list(self.blocks),
        }


class BadManifest(ValueError):
    """A manifest from a peer that does not have the shape of §7."""


def block_size_for(size: int, *, min_block: int = MIN_BLOCK_BYTES) -> int:
    """The smallest power of two >= *min_block* that keeps at most MAX_BLOCKS blocks."""
    block = min_block
    while block * MAX_BLOCKS < size:
        block *= 2
    return block


def block_count(size: int, block_size: int) -> int:
    return -(-size // block_size)


class BlockHasher:
    """One pass over a file, a few MiB per call (each call in a worker thread)."""

    def __init__(self, fd: int, size: int, block_size: int, read_bytes: int) -> None:
        self.fd, self.size, self.block_size, self.read_bytes = fd, size, block_size, read_bytes
        self.offset = 0
        self.whole = hashlib.sha256()
        self.block = hashlib.sha256()
        self.blocks: list[str] = []

    def step(self) -> bool:
        """Hash up to 4 reads; True once the whole file is done."""
        for _ in range(4):
            if self.offset >= self.size:
                return True
            block_end = (self.offset // self.block_size + 1) * self.block_size
            want = min(self.read_bytes, block_end - self.offset, self.size - self.offset)
            data = os.pread(self.fd, want, self.offset)
            if not data:
                raise OSError(f"file ended at {self.offset} of {self.size} bytes while hashing")
            self.whole.update(data)
            self.block.update(data)
            self.offset += len(data)
            if self.offset in (block_end, self.size):
                self.blocks.append(self.block.hexdigest())
                self.block = hashlib.sha256()
        return self.offset >= self.size

    def manifest(self) -> Manifest:
        return Manifest(self.size, self.whole.hexdigest(), self.block_size, tuple(self.blocks))


def hash_fd(
    fd: int, size: int, *, min_block: int = MIN_BLOCK_BYTES, read_bytes: int = READ_BYTES
) -> Manifest:
    """Hash *size* bytes of *fd* from offset 0, whole and per block, in one pass. Blocking.

    A file that ends early (it shrank under us) raises OSError: a digest of
    bytes that are not the announced size would be a lie.
    """
    job = BlockHasher(fd, size, block_size_for(size, min_block=min_block), read_bytes)
    while not job.step():
        pass
    return job.manifest()


def repr_digest_header(sha256_hex: str) -> str:
    """``sha-256=:<base64>:`` for a hex SHA-256."""
    return http_sf.ser({DIGEST_ALGORITHM: bytes.fromhex(sha256_hex)})


def parse_repr_digest(value: str | None) -> str | None:
    """The hex SHA-256 in a Repr-Digest field, or None if absent or malformed."""
    if not value or len(value) > MAX_FIELD_BYTES:
        return None
    try:
        parsed = http_sf.parse(value.encode("latin-1"), tltype="dictionary")
    except (ValueError, UnicodeEncodeError):
        return None
    if not isinstance(parsed, dict):
        return None
    member = parsed.get(DIGEST_ALGORITHM)
    item = member[0] if isinstance(member, tuple) else None
    if not isinstance(item, bytes) or len(item) != hashlib.sha256().digest_size:
        return None
    return item.hex()


def _is_hex_sha256(value: Any) -> TypeGuard[str]:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def parse_manifest(data: Any, *, size: int) -> Manifest:
    """Check a peer's ``/api/digest`` answer against §7 and the size we expect."""
    if not isinstance(data, dict):
        raise BadManifest("the manifest is not a JSON object")
    block_size = data.get("block_size")
    blocks = data.get("blocks")
    sha = data.get("sha256")
    if data.get("size") != size or isinstance(data.get("size"), bool):
        raise BadManifest(f"the manifest is for {data.get('size')!r} bytes, not {size}")
    if (
        not isinstance(block_size, int)
        or isinstance(block_size, bool)
        or block_size <= 0
        or block_size & (block_size - 1)
    ):
        raise BadManifest("the manifest's block_size is not a power of two")
    if not isinstance(blocks, list) or len(blocks) != block_count(size, block_size):
        raise BadManifest("the manifest's block list does not fit its size")
    if len(blocks) > MAX_BLOCKS or not all(_is_hex_sha256(b) for b in blocks):
        raise BadManifest("the manifest's blocks are not SHA-256 hex digests")
    if not _is_hex_sha256(sha):
        raise BadManifest("the manifest's sha256 is not a SHA-256 hex digest")
    return Manifest(size, sha, block_size, tuple(blocks))

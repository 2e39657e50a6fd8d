"""RFC 6962 / RFC 9162 Merkle tree: hashes, proofs, proof verification and an O(log n) append frontier.

The tree is built over *leaf hashes* (`leaf_hash(body)`), because the audit log stores those; `root`, `inclusion_proof`
and `consistency_proof` take the list of leaf hashes in log order. Proof generation is O(n) over that list (the
database layer will serve proofs from stored nodes later); verification is O(log n) and needs no tree.

Verifiers treat every input as hostile: anything malformed raises `VerificationError`, never another exception.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from aegis_proxy.audit.errors import AuditError, VerificationError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
# Sizes are bound by int64 columns and checkpoints; a proof can never be longer than the tree is deep.
MAX_TREE_SIZE = 2**63 - 1
_MAX_PROOF_LEN = 64

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data): the prefix keeps a leaf from ever equalling an interior node (second preimage)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split_point(n: int) -> int:
    """Largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_leaf_hashes(leaves: Sequence[bytes]) -> None:
    for i, h in enumerate(leaves):
        if not isinstance(h, bytes) or len(h) != HASH_SIZE:
            raise AuditError(f"leaf {i} is not a {HASH_SIZE}-byte hash", hint="pass leaf_hash(body) values, in order")


def _mth(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes, bottom-up. Carrying an unpaired last node up unchanged yields exactly the RFC's
    left-balanced split (largest power of two on the left), without recursion."""
    if not leaves:
        return EMPTY_ROOT
    level = list(leaves)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def root(leaves: Sequence[bytes]) -> bytes:
    """Merkle Tree Hash (RFC 6962 §2.1) of the tree whose leaf hashes are `leaves`; empty tree = SHA-256("")."""
    _check_leaf_hashes(leaves)
    return _mth(leaves)


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """Audit path PATH(index, D[n]) of RFC 9162 §2.1.3.1, bottom-up."""
    _check_leaf_hashes(leaves)
    if not 0 <= index < len(leaves):
        raise AuditError(f"leaf index {index} is outside a tree of size {len(leaves)}", hint="index must be < size")
    proof: list[bytes] = []
    lo, hi, m = 0, len(leaves), index
    # Walk down from the root, collecting the sibling subtree at each split; reversed at the end (proofs are bottom-up).
    while hi - lo > 1:
        k = _split_point(hi - lo)
        if m < k:
            proof.append(_mth(leaves[lo + k : hi]))
            hi = lo + k
        else:
            proof.append(_mth(leaves[lo : lo + k]))
            lo, m = lo + k, m - k
    proof.reverse()
    return proof


def consistency_proof(old_size: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(old_size, D[n]) of RFC 9162 §2.1.4.1. Empty when old_size is 0 or equals the tree size."""
    _check_leaf_hashes(leaves)
    n = len(leaves)
    if not 0 <= old_size <= n:
        raise AuditError(f"old size {old_size} is outside 0..{n}", hint="a tree can only be proven against a prefix")
    if old_size in (0, n):
        return []
    proof: list[bytes] = []
    lo, hi, m, whole = 0, n, old_size, True
    while m != hi - lo:
        k = _split_point(hi - lo)
        if m <= k:
            proof.append(_mth(leaves[lo + k : hi]))
            hi = lo + k
        else:
            proof.append(_mth(leaves[lo : lo + k]))
            lo, m, whole = lo + k, m - k, False
    if not whole:
        proof.append(_mth(leaves[lo:hi]))
    proof.reverse()
    return proof


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TREE_SIZE


def _check_proof(proof: object, index: int | None) -> list[bytes]:
    if not isinstance(proof, list | tuple):
        raise VerificationError("proof is not a list of hashes", index=index)
    if len(proof) > _MAX_PROOF_LEN:
        raise VerificationError(f"proof has {len(proof)} hashes, more than any tree needs", index=index)
    for i, h in enumerate(proof):
        if not _is_hash(h):
            raise VerificationError(f"proof element {i} is not a {HASH_SIZE}-byte hash", index=index)
    return list(proof)


def verify_inclusion(index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """RFC 9162 §2.1.3.2: raise VerificationError unless `leaf_hash` is leaf `index` of the tree (`size`, `root`)."""
    if not _is_size(index) or not _is_size(size):
        raise VerificationError(f"index {index!r} / size {size!r} are not valid tree positions")
    if index >= size:
        raise VerificationError(f"leaf index {index} is not inside a tree of size {size}", index=index)
    if not _is_hash(leaf_hash) or not _is_hash(root):
        raise VerificationError(f"leaf hash and root must be {HASH_SIZE}-byte hashes", index=index)
    path = _check_proof(proof, index)
    fn, sn, r = index, size - 1, leaf_hash
    for p in path:
        if sn == 0:
            raise VerificationError(f"inclusion proof for leaf {index} is longer than the tree is deep", index=index)
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError(f"inclusion proof for leaf {index} is too short for tree size {size}", index=index)
    if r != root:
        raise VerificationError(
            f"leaf {index} is not in the tree of size {size}: computed root {r.hex()[:16]}… differs", index=index
        )


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """RFC 9162 §2.1.4.2: raise VerificationError unless the tree (new_size, new_root) extends (old_size, old_root)."""
    if not _is_size(old_size) or not _is_size(new_size):
        raise VerificationError(f"sizes {old_size!r} / {new_size!r} are not valid tree sizes")
    if not _is_hash(old_root) or not _is_hash(new_root):
        raise VerificationError(f"roots must be {HASH_SIZE}-byte hashes", index=old_size)
    path = _check_proof(proof, old_size)
    if old_size > new_size:
        raise VerificationError(f"tree shrank from {old_size} to {new_size} (truncation or rollback)", index=new_size)
    if old_size == new_size or old_size == 0:
        if path:
            raise VerificationError("consistency proof must be empty for this pair of sizes", index=old_size)
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise VerificationError("old root is not the root of an empty tree", index=0)
        if old_size == new_size and old_root != new_root:
            raise VerificationError(f"two different roots for the same size {old_size} (fork)", index=old_size)
        return
    if not path:
        raise VerificationError(f"empty consistency proof between sizes {old_size} and {new_size}", index=old_size)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is itself a node of the new tree
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise VerificationError(f"consistency proof from size {old_size} is too long", index=old_size)
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError(f"consistency proof from size {old_size} is too short", index=old_size)
    if fr != old_root:
        raise VerificationError(f"the log's first {old_size} leaves no longer hash to the old root", index=old_size)
    if sr != new_root:
        raise VerificationError(f"size {new_size} root does not extend the size {old_size} root", index=new_size)


class MerkleTree:
    """Every level of the tree over `leaves`, hashed once (O(n)): the root, and any inclusion proof in O(log n).

    For exports that carry a proof per record; `inclusion_proof(index, leaves)` would rehash O(n) per proof. An
    unpaired last node is carried up unchanged, which is exactly RFC 6962's left-balanced tree (see `_mth`), so a
    node's sibling is the neighbour on its level, and a level where the path's node was carried adds nothing.
    """

    __slots__ = ("_levels",)

    def __init__(self, leaves: Sequence[bytes]) -> None:
        _check_leaf_hashes(leaves)
        levels = [list(leaves)]
        while len(levels[-1]) > 1:
            level = levels[-1]
            nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])
            levels.append(nxt)
        self._levels = levels

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def root(self) -> bytes:
        return self._levels[-1][0] if self._levels[0] else EMPTY_ROOT

    def inclusion_proof(self, index: int) -> list[bytes]:
        """The same path as `inclusion_proof(index, leaves)`, bottom-up."""
        if not 0 <= index < self.size:
            raise AuditError(f"leaf index {index} is outside a tree of size {self.size}", hint="index must be < size")
        proof: list[bytes] = []
        for level in self._levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                proof.append(level[sibling])
            index >>= 1
        return proof


class MerkleFrontier:
    """The tree's right edge: one hash per perfect subtree, largest first (one per set bit of `size`).

    Appending is O(log n) amortised O(1); `root()` folds at most 63 hashes. `state()` / `restore()` let a database
    keep the frontier in the log's head row so that a restart does not rehash the whole log.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._hashes: list[bytes] = []

    @classmethod
    def restore(cls, size: int, hashes: Iterable[bytes]) -> MerkleFrontier:
        """Rebuild from `state()`; rejects a hash list that cannot belong to a tree of `size`."""
        hashes = list(hashes)
        if not _is_size(size):
            raise AuditError(f"frontier size {size!r} is not a valid tree size", hint="restore from state()")
        if len(hashes) != size.bit_count() or not all(_is_hash(h) for h in hashes):
            raise AuditError(
                f"frontier for size {size} needs {size.bit_count()} hashes of {HASH_SIZE} bytes",
                hint="the stored frontier is corrupt; rebuild it from the leaf hashes",
            )
        frontier = cls()
        frontier._size, frontier._hashes = size, hashes
        return frontier

    def state(self) -> tuple[int, tuple[bytes, ...]]:
        """(size, hashes) to persist; `restore(*state)` gives an equal frontier."""
        return self._size, tuple(self._hashes)

    @property
    def size(self) -> int:
        return self._size

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash; merges equal-height subtrees like a binary counter increment."""
        if not _is_hash(leaf):
            raise AuditError(f"leaf must be a {HASH_SIZE}-byte hash", hint="append leaf_hash(body), not the body")
        if self._size >= MAX_TREE_SIZE:
            raise AuditError("the tree is full", hint="start a new log")
        node, size = leaf, self._size
        while size & 1:  # each trailing 1-bit is a subtree of the same height as `node`
            node = node_hash(self._hashes.pop(), node)
            size >>= 1
        self._hashes.append(node)
        self._size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        if not self._hashes:
            return EMPTY_ROOT
        r = self._hashes[-1]
        for h in reversed(self._hashes[:-1]):
            r = node_hash(h, r)
        return r

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MerkleFrontier) and self.state() == other.state()

    def __hash__(self) -> int:
        return hash(self.state())

    def __repr__(self) -> str:
        return f"MerkleFrontier(size={self._size}, root={self.root().hex()[:16]}…)"


CompactRange = MerkleFrontier  # the name transparency-dev uses for the same structure

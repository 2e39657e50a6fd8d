"""RFC 6962 Merkle tree: reference vectors, cross-check against a naive MTH, proof mutations, Hypothesis."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from aegis_proxy.audit.errors import AuditError, VerificationError
from aegis_proxy.audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MerkleFrontier,
    MerkleTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

# The standard inputs of the RFC 6962 reference tests (certificate-transparency merkle_tree_test, transparency-dev).
INPUTS = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]
LEAVES = [leaf_hash(d) for d in INPUTS]
# Roots of the trees over INPUTS[:n] (reference values).
REFERENCE_ROOTS = {
    0: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    1: "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    2: "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    3: "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    4: "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    5: "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    6: "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    7: "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    8: "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}
# (index, size) -> audit path, reference values.
REFERENCE_INCLUSION = {
    (0, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
}
# (old, new) -> consistency proof, reference values.
REFERENCE_CONSISTENCY = {
    (1, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (6, 8): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
    (2, 5): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
}


def naive_mth(data: list[bytes]) -> bytes:
    """RFC 6962 §2.1 written out literally over the entries (independent of the module under test)."""
    if not data:
        return hashlib.sha256(b"").digest()
    if len(data) == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = 1
    while k * 2 < len(data):
        k *= 2
    return hashlib.sha256(b"\x01" + naive_mth(data[:k]) + naive_mth(data[k:])).digest()


def leaves_of(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def flip_bit(h: bytes, bit: int) -> bytes:
    b = bytearray(h)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def rejects(fn, *args) -> bool:
    try:
        fn(*args)
    except VerificationError:
        return True
    return False


# --- hashing and roots --------------------------------------------------------------------------------------------


def test_hash_prefixes() -> None:
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT


@pytest.mark.parametrize("size", sorted(REFERENCE_ROOTS), ids=lambda s: f"size{s}")
def test_reference_roots(size: int) -> None:
    assert root(LEAVES[:size]).hex() == REFERENCE_ROOTS[size]
    assert naive_mth(INPUTS[:size]).hex() == REFERENCE_ROOTS[size]
    frontier = MerkleFrontier()
    frontier.extend(LEAVES[:size])
    assert frontier.root().hex() == REFERENCE_ROOTS[size]


@pytest.mark.parametrize(("index", "size"), sorted(REFERENCE_INCLUSION), ids=str)
def test_reference_inclusion(index: int, size: int) -> None:
    proof = inclusion_proof(index, LEAVES[:size])
    assert [p.hex() for p in proof] == REFERENCE_INCLUSION[(index, size)]
    verify_inclusion(index, size, LEAVES[index], proof, bytes.fromhex(REFERENCE_ROOTS[size]))


@pytest.mark.parametrize(("old", "new"), sorted(REFERENCE_CONSISTENCY), ids=str)
def test_reference_consistency(old: int, new: int) -> None:
    proof = consistency_proof(old, LEAVES[:new])
    assert [p.hex() for p in proof] == REFERENCE_CONSISTENCY[(old, new)]
    verify_consistency(old, new, bytes.fromhex(REFERENCE_ROOTS[old]), bytes.fromhex(REFERENCE_ROOTS[new]), proof)


def test_frontier_matches_naive_for_every_size_to_300() -> None:
    data = [i.to_bytes(2, "big") * (i % 5) for i in range(300)]
    frontier = MerkleFrontier()
    for n in range(1, 301):
        frontier.append(leaf_hash(data[n - 1]))
        expected = naive_mth(data[:n])
        assert frontier.size == n
        assert frontier.root() == expected, n
        assert root([leaf_hash(d) for d in data[:n]]) == expected, n
        # the persisted form is one hash per set bit and restores to an equal frontier
        size, hashes = frontier.state()
        assert len(hashes) == n.bit_count()
        restored = MerkleFrontier.restore(size, hashes)
        assert restored == frontier and restored.root() == expected


def test_frontier_restore_then_append_continues_the_same_tree() -> None:
    leaves = leaves_of(77)
    first = CompactRange()
    first.extend(leaves[:40])
    resumed = MerkleFrontier.restore(*first.state())
    resumed.extend(leaves[40:])
    assert resumed.root() == root(leaves)


@pytest.mark.parametrize(
    ("size", "hashes"),
    [
        (3, [b"a" * 32]),  # 3 = 0b11 needs two hashes
        (4, [b"a" * 32, b"b" * 32]),
        (1, [b"short"]),
        (-1, []),
        (2**63, [b"a" * 32]),
    ],
    ids=["too-few", "too-many", "short-hash", "negative", "too-big"],
)
def test_frontier_restore_rejects_corrupt_state(size: int, hashes: list[bytes]) -> None:
    with pytest.raises(AuditError):
        MerkleFrontier.restore(size, hashes)


def test_frontier_rejects_non_hash_leaf() -> None:
    with pytest.raises(AuditError):
        MerkleFrontier().append(b"not a hash")


def test_generation_rejects_bad_arguments() -> None:
    with pytest.raises(AuditError):
        inclusion_proof(3, leaves_of(3))
    with pytest.raises(AuditError):
        consistency_proof(4, leaves_of(3))
    with pytest.raises(AuditError):
        root([b"x"])


# --- every proof round-trips ----------------------------------------------------------------------------------------


def test_all_proofs_round_trip_up_to_64() -> None:
    leaves = leaves_of(64)
    roots = [root(leaves[:n]) for n in range(65)]
    for n in range(1, 65):
        for i in range(n):
            verify_inclusion(i, n, leaves[i], inclusion_proof(i, leaves[:n]), roots[n])
        for m in range(n + 1):
            verify_consistency(m, n, roots[m], roots[n], consistency_proof(m, leaves[:n]))


# --- mutations: every one must be rejected --------------------------------------------------------------------------

INCLUSION_CASES = [(i, n) for n in (1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 31, 32, 33, 100) for i in {0, n // 2, n - 1}]
CONSISTENCY_CASES = [
    (m, n) for n in (2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 33, 100) for m in {1, n // 2, n - 1} if 0 < m < n
]


@pytest.mark.parametrize(("index", "size"), INCLUSION_CASES, ids=str)
def test_inclusion_mutations_rejected(index: int, size: int) -> None:
    leaves = leaves_of(size + 1)
    tree_root = root(leaves[:size])
    proof = inclusion_proof(index, leaves[:size])
    leaf = leaves[index]
    verify_inclusion(index, size, leaf, proof, tree_root)

    for e, element in enumerate(proof):
        for bit in range(256):
            mutated = [*proof[:e], flip_bit(element, bit), *proof[e + 1 :]]
            assert rejects(verify_inclusion, index, size, leaf, mutated, tree_root), (e, bit)
    for bit in range(256):
        assert rejects(verify_inclusion, index, size, flip_bit(leaf, bit), proof, tree_root)
        assert rejects(verify_inclusion, index, size, leaf, proof, flip_bit(tree_root, bit))
    # index +-1 (the neighbour's leaf hash stays the claimed one)
    assert rejects(verify_inclusion, index - 1, size, leaf, proof, tree_root)
    assert rejects(verify_inclusion, index + 1, size, leaf, proof, tree_root)
    # size +-1 against the real root of that size (a proof replayed against another checkpoint)
    for other in (size - 1, size + 1):
        assert rejects(verify_inclusion, index, other, leaf, proof, root(leaves[:other]) if other >= 0 else tree_root)
    # size x2 and /2 with the root unchanged (transparency-dev's wrong-height probes)
    assert rejects(verify_inclusion, index, size * 2, leaf, proof, tree_root)
    assert rejects(verify_inclusion, index, size // 2, leaf, proof, tree_root)
    if proof:
        assert rejects(verify_inclusion, index, size, leaf, proof[:-1], tree_root)  # truncated
        assert rejects(verify_inclusion, index, size, leaf, proof[1:], tree_root)
        assert rejects(verify_inclusion, index, size, leaf, [], tree_root)  # empty proof for size > 1
        assert rejects(verify_inclusion, index, size, leaf, proof[::-1], tree_root) or len(set(proof)) < 2
    assert rejects(verify_inclusion, index, size, leaf, [*proof, leaf], tree_root)  # extended
    assert rejects(verify_inclusion, index, size, leaf, [*proof, EMPTY_ROOT], tree_root)
    assert rejects(verify_inclusion, index, size, leaf, [leaf, *proof], tree_root)


@pytest.mark.parametrize(("old", "new"), CONSISTENCY_CASES, ids=str)
def test_consistency_mutations_rejected(old: int, new: int) -> None:
    leaves = leaves_of(new + 1)
    roots = [root(leaves[:n]) for n in range(new + 2)]
    proof = consistency_proof(old, leaves[:new])
    verify_consistency(old, new, roots[old], roots[new], proof)

    for e, element in enumerate(proof):
        for bit in range(256):
            mutated = [*proof[:e], flip_bit(element, bit), *proof[e + 1 :]]
            assert rejects(verify_consistency, old, new, roots[old], roots[new], mutated), (e, bit)
    for bit in range(256):
        assert rejects(verify_consistency, old, new, flip_bit(roots[old], bit), roots[new], proof)
        assert rejects(verify_consistency, old, new, roots[old], flip_bit(roots[new], bit), proof)
    # sizes +-1 with the real roots of those sizes
    for o, n in ((old - 1, new), (old + 1, new), (old, new - 1), (old, new + 1)):
        assert rejects(verify_consistency, o, n, roots[o], roots[n], proof), (o, n)
    assert rejects(verify_consistency, old, new, roots[new], roots[old], proof)  # swapped roots
    assert rejects(verify_consistency, new, old, roots[new], roots[old], proof)  # swapped sizes (shrink)
    assert rejects(verify_consistency, old, new, roots[old], roots[new], proof[:-1])  # truncated
    assert rejects(verify_consistency, old, new, roots[old], roots[new], [])  # empty proof
    assert rejects(verify_consistency, old, new, roots[old], roots[new], [*proof, roots[new]])  # extended
    assert rejects(verify_consistency, old, new, roots[old], roots[new], [roots[old], *proof])


def test_same_size_different_root_is_a_fork() -> None:
    a, b = root(leaves_of(5)), root([*leaves_of(4), leaf_hash(b"other")])
    with pytest.raises(VerificationError, match="fork") as err:
        verify_consistency(5, 5, a, b, [])
    assert err.value.index == 5
    verify_consistency(5, 5, a, a, [])


def test_shrinking_tree_is_rejected_with_the_new_size() -> None:
    with pytest.raises(VerificationError, match="shrank") as err:
        verify_consistency(8, 6, bytes.fromhex(REFERENCE_ROOTS[8]), bytes.fromhex(REFERENCE_ROOTS[6]), [])
    assert err.value.index == 6


def test_empty_old_tree() -> None:
    verify_consistency(0, 8, EMPTY_ROOT, bytes.fromhex(REFERENCE_ROOTS[8]), [])
    assert rejects(verify_consistency, 0, 8, LEAVES[0], bytes.fromhex(REFERENCE_ROOTS[8]), [])
    assert rejects(verify_consistency, 0, 8, EMPTY_ROOT, bytes.fromhex(REFERENCE_ROOTS[8]), [LEAVES[0]])


def test_interior_node_presented_as_leaf_is_rejected() -> None:
    """Second preimage: the children of an interior node, concatenated, offered as a leaf's data."""
    leaves = leaves_of(8)
    tree_root = root(leaves)
    left, right = node_hash(leaves[0], leaves[1]), node_hash(leaves[2], leaves[3])
    forged_leaf = leaf_hash(leaves[0] + leaves[1])
    upper_path = inclusion_proof(0, leaves)[1:]  # the path of the interior node (0,1) up to the root
    for index in range(8):
        assert rejects(verify_inclusion, index, 8, forged_leaf, inclusion_proof(index, leaves), tree_root)
    assert rejects(verify_inclusion, 0, 8, forged_leaf, upper_path, tree_root)
    # the interior node hash itself, claimed as a leaf of the real-size tree with a path of any length
    for path in (upper_path, inclusion_proof(0, leaves), [right, *upper_path[1:]]):
        assert rejects(verify_inclusion, 0, 8, left, path, tree_root)


def test_error_names_the_failing_index() -> None:
    leaves = leaves_of(10)
    proof = inclusion_proof(7, leaves)
    with pytest.raises(VerificationError) as err:
        verify_inclusion(7, 10, leaves[6], proof, root(leaves))
    assert err.value.index == 7
    assert "leaf 7" in str(err.value)


@pytest.mark.parametrize(
    "args",
    [
        (0, 1, b"short", [], EMPTY_ROOT),
        (0, 1, EMPTY_ROOT, [], b""),
        ("0", 1, EMPTY_ROOT, [], EMPTY_ROOT),
        (True, 2, EMPTY_ROOT, [EMPTY_ROOT], EMPTY_ROOT),
        (0, 2**64, EMPTY_ROOT, [], EMPTY_ROOT),
        (-1, 1, EMPTY_ROOT, [], EMPTY_ROOT),
        (0, 2, EMPTY_ROOT, "not a list", EMPTY_ROOT),
        (0, 2, EMPTY_ROOT, [None], EMPTY_ROOT),
        (0, 2, EMPTY_ROOT, [EMPTY_ROOT] * 65, EMPTY_ROOT),
    ],
    ids=["short-leaf", "short-root", "str-index", "bool-index", "huge-size", "negative", "proof-str", "none", "long"],
)
def test_malformed_inclusion_inputs_raise_verification_error(args: tuple) -> None:
    with pytest.raises(VerificationError):
        verify_inclusion(*args)


# --- Hypothesis -----------------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 600), data=st.data())
def test_random_inclusion_round_trip(size: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, size - 1))
    leaves = leaves_of(size)
    verify_inclusion(index, size, leaves[index], inclusion_proof(index, leaves), root(leaves))


@settings(max_examples=200, deadline=None)
@given(new=st.integers(0, 600), data=st.data())
def test_random_consistency_round_trip(new: int, data: st.DataObject) -> None:
    old = data.draw(st.integers(0, new))
    leaves = leaves_of(new)
    frontier = MerkleFrontier()
    frontier.extend(leaves[:old])
    old_root = frontier.root()
    frontier.extend(leaves[old:])
    verify_consistency(old, new, old_root, frontier.root(), consistency_proof(old, leaves))


hashes = st.binary(min_size=32, max_size=32)
garbage = st.one_of(hashes, st.binary(max_size=40), st.none(), st.integers(), st.text(max_size=5))
sizes = st.one_of(st.integers(-3, 2**64), st.booleans(), st.none(), st.text(max_size=3))
proofs = st.one_of(st.lists(hashes, max_size=70), st.lists(garbage, max_size=5), garbage)


@settings(max_examples=500, deadline=None)
@given(index=sizes, size=sizes, leaf=garbage, proof=proofs, tree_root=garbage)
def test_garbage_inclusion_never_verifies(index, size, leaf, proof, tree_root) -> None:
    # The one genuinely valid proof random values can form: a one-leaf tree whose root is the leaf hash.
    assume(not (index == 0 and size == 1 and proof == [] and leaf == tree_root and isinstance(leaf, bytes)))
    with pytest.raises(VerificationError):
        verify_inclusion(index, size, leaf, proof, tree_root)


@settings(max_examples=500, deadline=None)
@given(old=sizes, new=sizes, old_root=garbage, new_root=garbage, proof=proofs)
def test_garbage_consistency_never_verifies(old, new, old_root, new_root, proof) -> None:
    if old == new and old_root == new_root and proof == [] and isinstance(old, int) and not isinstance(old, bool):
        return  # identical tree heads are trivially consistent
    if old == 0 and old_root == EMPTY_ROOT and proof == []:
        return  # the empty tree is a prefix of every tree
    with pytest.raises(VerificationError):
        verify_consistency(old, new, old_root, new_root, proof)


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 200), data=st.data(), proof=st.lists(hashes, min_size=1, max_size=10))
def test_well_shaped_random_proofs_never_verify(size: int, data: st.DataObject, proof: list[bytes]) -> None:
    """Right sizes, real root and leaf, random hashes as the path: past the shape checks, into the hashing."""
    index = data.draw(st.integers(0, size - 1))
    old = data.draw(st.integers(1, size))
    leaves = leaves_of(size)
    with pytest.raises(VerificationError):
        verify_inclusion(index, size, leaves[index], proof, root(leaves))
    if old < size:
        with pytest.raises(VerificationError):
            verify_consistency(old, size, root(leaves[:old]), root(leaves), proof)


def test_merkle_tree_gives_the_same_root_and_proofs_for_every_size_to_70() -> None:
    for size in range(71):
        leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
        tree = MerkleTree(leaves)
        assert (tree.size, tree.root()) == (size, root(leaves))
        for index in range(size):
            assert tree.inclusion_proof(index) == inclusion_proof(index, leaves), (index, size)


@pytest.mark.parametrize("index", [-1, 5])
def test_merkle_tree_refuses_an_index_outside_it(index: int) -> None:
    with pytest.raises(AuditError, match="outside a tree of size 5"):
        MerkleTree([leaf_hash(bytes([i])) for i in range(5)]).inclusion_proof(index)

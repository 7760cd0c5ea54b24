"""Near-duplicate photos: copies are found, different photos are not, groups stay together in the folds."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data.catalog import NEW_WHALE
from data.duplicates import close_hashes, duplicate_groups, find_duplicates, pixel_diff
from data.errors import InputError
from data.folds import make_folds


def scene(seed: int, width: int = 240, height: int = 150) -> np.ndarray:
    """A smooth random RGB picture (blobs at several scales), like a photo rather than pixel noise."""
    rng = np.random.default_rng(seed)
    out = np.zeros((height, width, 3), np.float32)
    for cells in (3, 6, 12):
        coarse = rng.uniform(0, 255, (cells, cells * 2, 3)).astype(np.uint8)
        out += np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float32)
    return (out / 3).clip(0, 255).astype(np.uint8)


def save(pixels: np.ndarray, path: Path, quality: int = 95) -> Path:
    Image.fromarray(pixels).save(path, quality=quality)
    return path


@pytest.fixture()
def photos(tmp_path) -> dict[str, Path]:
    base = scene(1)
    noisy = (base + np.random.default_rng(9).normal(0, 4, base.shape)).clip(0, 255).astype(np.uint8)
    return {
        "orig.jpg": save(base, tmp_path / "orig.jpg"),
        "reencoded.jpg": save(base, tmp_path / "reencoded.jpg", quality=60),
        "noised.png": save(noisy, tmp_path / "noised.png"),
        "other.jpg": save(scene(2), tmp_path / "other.jpg"),
        "other2.jpg": save(scene(3), tmp_path / "other2.jpg"),
        "mirrored.jpg": save(base[:, ::-1].copy(), tmp_path / "mirrored.jpg"),
        "resized.jpg": save(np.asarray(Image.fromarray(base).resize((200, 125))), tmp_path / "resized.jpg"),
    }


def test_reencoded_and_noised_copies_are_found_and_different_photos_are_not(photos):
    pairs = find_duplicates(list(photos.values()), progress=False)
    found = {frozenset(p) for p in zip(pairs["Image1"], pairs["Image2"], strict=True)}
    assert found == {frozenset(p) for p in combinations(["orig.jpg", "reencoded.jpg", "noised.png"], 2)}
    assert (pairs["bits"] <= 6).all() and (pairs["pixel_diff"] <= 0.1).all()


def test_same_picture_at_another_size_is_not_a_duplicate_but_passes_the_hash_test(photos):
    pairs = find_duplicates([photos["orig.jpg"], photos["resized.jpg"]], progress=False)
    assert pairs.empty
    loose = find_duplicates([photos["orig.jpg"], photos["resized.jpg"]], max_bits=64, progress=False)
    assert loose.empty  # the size rule, not the hash, keeps them apart


def test_thresholds_decide_what_counts_as_a_duplicate(photos):
    paths = [photos["orig.jpg"], photos["noised.png"]]
    pair = find_duplicates(paths, names=["a", "b"], progress=False)
    assert pair[["Image1", "Image2"]].values.tolist() == [["a", "b"]]
    assert find_duplicates(paths, max_pixel_diff=pair["pixel_diff"][0] / 2, progress=False).empty
    if pair["bits"][0] > 0:
        assert find_duplicates(paths, max_bits=int(pair["bits"][0]) - 1, progress=False).empty


def test_pixel_diff_is_zero_for_a_copy_and_large_for_unrelated_thumbnails():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (2, 1, 32, 32), dtype=np.uint8)
    assert pixel_diff(a, a)[0] == pytest.approx(0.0, abs=1e-6)
    assert pixel_diff(a, (a // 2 + 60).astype(np.uint8))[0] < 1e-3  # contrast and brightness are normalised
    assert pixel_diff(a, b)[0] > 1.5


def test_blocked_hamming_search_matches_brute_force():
    rng = np.random.default_rng(4)
    hashes = rng.integers(0, 2**63, 300, dtype=np.uint64)
    hashes[50] = hashes[10] ^ np.uint64(0b1011)  # 3 bits apart
    hashes[299] = hashes[0]
    expected = {(i, j) for i in range(300) for j in range(i + 1, 300)
                if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= 20}
    i, j, bits = close_hashes(hashes, 20, block_elements=1000)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == expected
    assert {(10, 50), (0, 299)} <= expected
    got = dict(zip(zip(i.tolist(), j.tolist(), strict=True), bits.tolist(), strict=True))
    assert got[(10, 50)] == 3 and got[(0, 299)] == 0


def test_duplicate_groups_join_chains_of_pairs():
    pairs = pd.DataFrame({"Image1": ["c", "a", "x"], "Image2": ["d", "b", "c"]})
    assert duplicate_groups(pairs) == {"a": 0, "b": 0, "c": 1, "d": 1, "x": 1}
    chained = pd.concat([pairs, pd.DataFrame({"Image1": ["d"], "Image2": ["b"]})])
    assert duplicate_groups(chained) == dict.fromkeys("abcdx", 0)
    assert duplicate_groups(pairs.iloc[:0]) == {}


def test_undecodable_photo_is_an_input_error_naming_it(tmp_path, photos):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(photos["orig.jpg"].read_bytes()[:400])
    with pytest.raises(InputError, match="broken.jpg"):
        find_duplicates([photos["orig.jpg"], bad], progress=False)


def test_found_duplicates_end_on_the_same_side_of_every_fold(tmp_path):
    rows, paths = [], []
    for whale, n in (("w_a", 5), ("w_b", 4), ("w_c", 3), (NEW_WHALE, 6)):
        for k in range(n):
            name = f"{whale}_{k}.jpg"
            rows.append((name, whale))
            paths.append(save(scene(len(rows)), tmp_path / name))
    seed_of = {name: k + 1 for k, (name, _) in enumerate(rows)}
    copies = {"w_a_3.jpg": "w_a_0.jpg",  # a whale's photo uploaded twice
              "w_c_2.jpg": "w_b_1.jpg",  # one photo filed under two whales
              "new_whale_4.jpg": "new_whale_1.jpg"}  # an unknown whale uploaded twice
    for copy, original in copies.items():
        save(scene(seed_of[original]), tmp_path / copy, quality=70)
    train = pd.DataFrame(rows, columns=["Image", "Id"])
    pairs = find_duplicates(paths, names=train["Image"].tolist(), progress=False)
    assert {frozenset(p) for p in pairs[["Image1", "Image2"]].values} == {frozenset(p) for p in copies.items()}
    groups = duplicate_groups(pairs)
    for seed in range(6):
        fold = make_folds(train, n_folds=3, seed=seed, groups=groups).set_index("Image")["fold"]
        for a, b in pairs[["Image1", "Image2"]].values:
            assert fold[a] == fold[b]

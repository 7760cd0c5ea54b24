import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import data.protocol as protocol
from data.catalog import NEW_WHALE, load_catalog, read_train_csv
from data.errors import InputError
from data.protocol import ProtocolConfig, split_catalog, write_protocol
from tests.batches import failing_at

REPO = Path(__file__).resolve().parents[1]
RIGHT_WHALE = REPO.parent / "shared" / "data" / "right_whale"


def _frame(counts: dict[str, int]) -> pd.DataFrame:
    rows = [(f"{ident}_{k}.jpg", ident) for ident, n in counts.items() for k in range(n)]
    return pd.DataFrame(rows, columns=["Image", "Id"])


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (links followed) by relative name -> its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def check_invariants(source: pd.DataFrame, out: Path, cfg: ProtocolConfig) -> None:
    """What every protocol folder must satisfy, checked from the files alone."""
    catalog = read_train_csv(out / "train.csv")
    truth = read_train_csv(out / "truth.csv")
    queries = pd.read_csv(out / "queries.csv", dtype=str)
    assert list(truth["Image"]) == list(queries["Image"])
    src_id = dict(zip(source["Image"], source["Id"]))
    # Queries: fresh unique names that carry no Id, each a distinct source photo not in the catalog.
    assert truth["Image"].is_unique and queries["Source"].is_unique
    assert all(re.fullmatch(r"q_\d{5,}\.\w+", name) for name in truth["Image"])
    ids = set(source["Id"])
    assert not any(ident in name for name in truth["Image"] for ident in ids)
    assert not set(queries["Source"]) & set(catalog["Image"])
    assert not set(truth["Image"]) & set(catalog["Image"])
    # The catalog is a subset of the source with the same Ids; new_whale photos all stay.
    assert all(src_id[name] == ident for name, ident in zip(catalog["Image"], catalog["Id"]))
    assert (catalog["Id"] == NEW_WHALE).sum() == (source["Id"] == NEW_WHALE).sum()
    # A known query's truth is its source Id and that individual keeps a photo in the catalog;
    # a new_whale query comes from an individual with no photo left in the catalog.
    kept = set(catalog["Id"])
    for ident, src in zip(truth["Id"], queries["Source"]):
        if ident == NEW_WHALE:
            assert src_id[src] != NEW_WHALE and src_id[src] not in kept
        else:
            assert src_id[src] == ident and ident in kept
    # Every individual is either held out whole or keeps at least one photo (min_photos - queries, here).
    counts = source[source["Id"] != NEW_WHALE]["Id"].value_counts()
    held = set(truth.loc[truth["Id"] == NEW_WHALE, "Image"].map(dict(zip(queries["Image"], queries["Source"])))
               .map(src_id))
    left = catalog["Id"].value_counts()
    n_held = int(round(cfg.new_individual_share * len(counts)))
    assert len(held) == n_held and len(held) + len(set(left.index) - {NEW_WHALE}) == len(counts)
    for ident, n in counts.items():
        if ident in held:
            assert ident not in left
        elif n >= cfg.min_photos:
            assert left[ident] == n - cfg.queries_per_individual >= 1
            assert (truth["Id"] == ident).sum() == cfg.queries_per_individual
        else:
            assert left[ident] == n and (truth["Id"] == ident).sum() == 0
    # Photos are the source photos, byte for byte.
    for name, src in zip(queries["Image"], queries["Source"]):
        assert (out / "test" / name).read_bytes() == (source_dir_of(out) / "train" / src).read_bytes()


def source_dir_of(out: Path) -> Path:
    return Path(json.loads((out / "protocol.json").read_text())["source"])


def test_hand_worked_split():
    # 5 individuals; a share of 0.2 holds out round(0.2 * 5) = 1 of them whole. Of the other four,
    # those with >= 3 photos give 1 query each; the new_whale photos stay in the catalog.
    counts = {"A": 5, "B": 3, "C": 2, "D": 1, "E": 4, NEW_WHALE: 2}
    train = _frame(counts)
    for seed in range(6):
        split = split_catalog(train, ProtocolConfig(seed=seed))
        assert len(split.new_individuals) == 1
        (held,) = split.new_individuals
        givers = {"A", "B", "E"} - {held}
        q = split.queries
        assert (q["Id"] == NEW_WHALE).sum() == counts[held]
        assert set(q.loc[q["Id"] != NEW_WHALE, "Id"]) == givers and len(q) == counts[held] + len(givers)
        assert len(split.catalog) == sum(counts.values()) - counts[held] - len(givers)
        assert split.unused_photos == 0
    # With two queries per individual and min 4 photos: A gives 2 and keeps 3, E gives 2 and keeps 2.
    split = split_catalog(train, ProtocolConfig(seed=0, new_individual_share=0.0, queries_per_individual=2,
                                                min_photos=4))
    assert split.queries["Id"].value_counts().to_dict() == {"A": 2, "E": 2}
    assert split.catalog["Id"].value_counts().to_dict() == {"A": 3, "B": 3, "C": 2, "E": 2, NEW_WHALE: 2, "D": 1}


def test_max_new_photos_caps_queries_of_held_out_individuals():
    train = _frame({"A": 6, "B": 6, "C": 6, "D": 6})
    split = split_catalog(train, ProtocolConfig(seed=3, new_individual_share=0.5, max_new_photos=2))
    assert (split.queries["Id"] == NEW_WHALE).sum() == 2 * 2
    assert split.unused_photos == 2 * 4
    assert len(split.catalog) == 2 * 5  # the two kept individuals gave one query each


def test_seed_changes_the_split_and_only_the_seed():
    train = _frame({f"w{i}": 3 + i % 4 for i in range(30)})
    a = split_catalog(train, ProtocolConfig(seed=0))
    b = split_catalog(train, ProtocolConfig(seed=0))
    c = split_catalog(train, ProtocolConfig(seed=1))
    pd.testing.assert_frame_equal(a.queries, b.queries)
    pd.testing.assert_frame_equal(a.catalog, b.catalog)
    assert set(a.queries["Source"]) != set(c.queries["Source"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"new_individual_share": 1.0}, "new_individual_share"),
        ({"new_individual_share": -0.1}, "new_individual_share"),
        ({"queries_per_individual": 3, "min_photos": 3}, "must exceed"),
        ({"max_new_photos": -1}, "max_new_photos"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProtocolConfig(**kwargs).check()


def test_a_catalog_without_queries_is_refused():
    with pytest.raises(ValueError, match="no query"):
        split_catalog(_frame({"A": 2, "B": 1}), ProtocolConfig(new_individual_share=0.0))
    with pytest.raises(ValueError, match="only new_whale"):
        split_catalog(_frame({NEW_WHALE: 4}), ProtocolConfig())


def test_tiny_catalog_protocol_loads_and_keeps_the_invariants(tiny_catalog, tmp_path):
    cfg = ProtocolConfig(seed=0, new_individual_share=0.25)
    out = tmp_path / "proto"
    s = write_protocol(tiny_catalog, out, cfg)
    source = read_train_csv(tiny_catalog / "train.csv")
    check_invariants(source, out, cfg)
    cat = load_catalog(out)  # train/, test/ and boxes.csv all accepted (boxes checked inside their photos)
    truth = read_train_csv(out / "truth.csv")
    assert sorted(cat.test_images) == sorted(truth["Image"])
    assert len(cat.train) == s.catalog_photos and s.queries == len(truth)
    assert s.new_individuals == 2 and s.new_whale_queries == (truth["Id"] == NEW_WHALE).sum()
    # boxes.csv: the source boxes of the catalog photos and of the queries under their new names.
    src_boxes = pd.read_csv(tiny_catalog / "boxes.csv").set_index("Image")
    boxes = pd.read_csv(out / "boxes.csv").set_index("Image")
    assert set(boxes.index) == set(cat.train["Image"]) | set(truth["Image"])
    renamed = pd.read_csv(out / "queries.csv").set_index("Image")["Source"]
    name = truth["Image"].iloc[0]
    assert boxes.loc[name].tolist() == pytest.approx(src_boxes.loc[renamed[name]].tolist())
    assert sum(s.links.values()) == s.catalog_photos + s.queries
    assert not [p for p in tmp_path.iterdir() if p.name != "proto"]  # no temporary folder left


def test_same_seed_same_files_other_seed_other_split(tiny_catalog, tmp_path):
    cfg = ProtocolConfig(seed=5, new_individual_share=0.25)
    write_protocol(tiny_catalog, tmp_path / "a", cfg)
    write_protocol(tiny_catalog, tmp_path / "b", cfg, link="copy")
    write_protocol(tiny_catalog, tmp_path / "c", ProtocolConfig(seed=6, new_individual_share=0.25))
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert a == b
    assert a["truth.csv"] != c["truth.csv"] or a["queries.csv"] != c["queries.csv"]


def test_link_modes(tiny_catalog, tmp_path):
    s = write_protocol(tiny_catalog, tmp_path / "s", ProtocolConfig(), link="symlink")
    assert s.links["symlink"] == s.catalog_photos + s.queries
    first = next((tmp_path / "s" / "test").iterdir())
    assert first.is_symlink() and first.resolve().parent == (tiny_catalog / "train").resolve()
    load_catalog(tmp_path / "s")
    s = write_protocol(tiny_catalog, tmp_path / "c", ProtocolConfig(), link="copy")
    assert s.links["copy"] == s.catalog_photos + s.queries
    assert not any(p.is_symlink() for p in (tmp_path / "c").rglob("*"))


def test_failure_midway_leaves_nothing_behind(tiny_catalog, tmp_path, monkeypatch):
    monkeypatch.setattr(protocol, "place_file", failing_at(protocol.place_file, 7))
    with pytest.raises(OSError, match="disk full"):
        write_protocol(tiny_catalog, tmp_path / "out", ProtocolConfig())
    assert list(tmp_path.iterdir()) == []


def test_existing_output_and_source_folder_are_protected(tiny_catalog, tmp_path):
    out = tmp_path / "out"
    write_protocol(tiny_catalog, out, ProtocolConfig(seed=0))
    before = _files(out)
    with pytest.raises(InputError, match="already exists"):
        write_protocol(tiny_catalog, out, ProtocolConfig(seed=1))
    assert _files(out) == before
    write_protocol(tiny_catalog, out, ProtocolConfig(seed=1), force=True)  # a protocol folder may be replaced
    assert _files(out) != before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a protocol folder"):
        write_protocol(tiny_catalog, other, ProtocolConfig(), force=True)
    for target in (tiny_catalog, tiny_catalog.parent):
        with pytest.raises(InputError, match="source folder"):
            write_protocol(tiny_catalog, target, ProtocolConfig(), force=True)
    with pytest.raises(InputError, match="data folder not found"):
        write_protocol(tmp_path / "nowhere", tmp_path / "x", ProtocolConfig())


def test_a_missing_photo_is_one_line_naming_train_csv(tmp_path):
    src = tmp_path / "src"
    (src / "train").mkdir(parents=True)
    (src / "train.csv").write_text("Image,Id\na.jpg,w1\n")
    with pytest.raises(InputError, match="not found") as err:
        write_protocol(src, tmp_path / "out", ProtocolConfig())
    assert err.value.path == src / "train.csv"
    assert not (tmp_path / "out").exists()


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "make_protocol.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_script_writes_and_summarises(tiny_catalog, tmp_path):
    out = tmp_path / "p"
    res = _script("--data-dir", str(tiny_catalog), "--out", str(out), "--seed", "2", "--new-share", "0.25")
    assert res.returncode == 0, res.stderr
    truth = read_train_csv(out / "truth.csv")
    n_new = int((truth["Id"] == NEW_WHALE).sum())
    assert f"{n_new} new_whale ({n_new / len(truth):.1%})" in res.stdout
    assert f"test/ {len(truth)} photos" in res.stdout
    res = _script("--data-dir", str(tiny_catalog), "--out", str(out))
    assert res.returncode == 2 and "already exists" in res.stderr and res.stderr.count("\n") == 1
    res = _script("--data-dir", str(tiny_catalog), "--out", str(tmp_path / "q"), "--min-photos", "1")
    assert res.returncode == 2 and "bad settings" in res.stderr and not (tmp_path / "q").exists()
    res = _script("--help")
    assert res.returncode == 0 and "--out /tmp/protocol_rw --seed 0" in res.stdout


@pytest.mark.skipif(not (RIGHT_WHALE / "train.csv").is_file(), reason="right_whale catalog not present")
def test_right_whale_protocol(tmp_path):
    cfg = ProtocolConfig(seed=0)
    out = tmp_path / "rw"
    s = write_protocol(RIGHT_WHALE, out, cfg)
    source = read_train_csv(RIGHT_WHALE / "train.csv")
    counts = source[source["Id"] != NEW_WHALE]["Id"].value_counts()
    assert s.source_photos == len(source) and s.source_individuals == len(counts)
    assert s.new_individuals == round(0.2 * len(counts))
    assert s.catalog_individuals == len(counts) - s.new_individuals
    held = set(counts.index) - set(read_train_csv(out / "train.csv")["Id"])
    assert s.new_whale_queries == counts[list(held)].sum()
    assert s.known_queries == int((counts.drop(list(held)) >= cfg.min_photos).sum())
    assert s.catalog_photos + s.queries == s.source_photos
    assert s.new_whale_share == pytest.approx(s.new_whale_queries / s.queries)
    check_invariants(source, out, cfg)
    cat = load_catalog(out)
    assert len(cat.test_images) == s.queries and len(cat.train) == s.catalog_photos


# N-way one-shot tasks ------------------------------------------------------------------------------------

OMNIGLOT = REPO.parent / "shared" / "data" / "omniglot"
GROUP_SIZES = {"Alpha": 5, "Beta": 4, "Gamma": 3, "Delta": 2}


def _grouped_catalog(root: Path, sizes: dict[str, int], photos: int = 3) -> Path:
    """Classes ``<group>/c<k>`` with ``photos`` 1-bit PNGs each (distinct noise), plus ``Solo`` (an Id without
    '/'), ``Alpha/lonely`` with a single photo and two new_whale photos."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = [(f"{g}/c{k}", p) for g, n in sizes.items() for k in range(n) for p in range(photos)]
    rows += [("Solo", 0), ("Solo", 1), ("Alpha/lonely", 0), (NEW_WHALE, 0), (NEW_WHALE, 1)]
    records = []
    for ident, p in rows:
        name = f"{ident.replace('/', '_')}/{p:02d}.png"
        path = root / "train" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.random((12, 12)) > 0.5).save(path)
        records.append((name, ident))
    pd.DataFrame(records, columns=["Image", "Id"]).to_csv(root / "train.csv", index=False)
    return root


@pytest.fixture()
def grouped(tmp_path) -> Path:
    return _grouped_catalog(tmp_path / "src", GROUP_SIZES)


def _tasks(out: Path) -> list[Path]:
    return sorted(out.glob("task_*"))


def test_group_of_is_the_id_before_the_first_slash():
    assert protocol.group_of("Balinese/character01") == "Balinese"
    assert protocol.group_of("a/b/c") == "a" and protocol.group_of("w_123") == "w_123"


def test_one_shot_tasks_hold_out_whole_groups_one_shot_and_one_query_per_class(grouped, tmp_path):
    cfg = protocol.OneShotConfig(ways=3, tasks=6, held_out_groups=2, seed=1)
    out = tmp_path / "os"
    s = protocol.write_one_shot(grouped, out, cfg)
    source = read_train_csv(grouped / "train.csv")
    src_id = dict(zip(source["Image"], source["Id"]))
    record = json.loads((out / "protocol.json").read_text())
    held = set(record["held_out_groups"])
    assert len(held) == 2 and held == set(s.held_out_groups) and held <= set(GROUP_SIZES) | {"Solo"}
    # The training catalog: every photo of the other groups (new_whale included), none of a held-out group.
    catalog = load_catalog(out / "catalog", need_test=False).train
    assert not {protocol.group_of(i) for i in catalog["Id"]} & held
    kept = source[~source["Id"].map(lambda i: i != NEW_WHALE and protocol.group_of(i) in held)]
    assert list(catalog["Image"]) == list(kept["Image"]) and (catalog["Id"] == NEW_WHALE).sum() == 2
    assert not (out / "catalog" / "test").exists()
    big = {g for g in held if GROUP_SIZES.get(g, 1) >= cfg.ways}
    assert len(_tasks(out)) == cfg.tasks == s.tasks
    for task in _tasks(out):
        cat = load_catalog(task)
        shots = cat.train
        truth = read_train_csv(task / "truth.csv")
        queries = pd.read_csv(task / "queries.csv", dtype=str)
        assert len(shots) == shots["Id"].nunique() == cfg.ways  # N classes, one shot each
        assert sorted(truth["Id"]) == sorted(shots["Id"])  # one query each
        assert sorted(cat.test_images) == sorted(truth["Image"]) and list(queries["Image"]) == list(truth["Image"])
        assert all(re.fullmatch(r"q_\d{5}\.png", n) for n in truth["Image"])
        assert not set(queries["Source"]) & set(shots["Image"])  # a query is another photo than the shot
        for name, ident, src in zip(truth["Image"], truth["Id"], queries["Source"]):
            assert src_id[src] == ident
            assert (task / "test" / name).read_bytes() == (grouped / "train" / src).read_bytes()
        groups = {protocol.group_of(i) for i in shots["Id"]}
        assert groups <= held and "Alpha/lonely" not in set(shots["Id"])
        assert len(groups) == 1 if big else len(groups) >= 1
    single = [t for t in record["tasks"] if len(t["groups"]) == 1]
    assert s.single_group_tasks == len(single) == (cfg.tasks if big else s.single_group_tasks)


def test_one_shot_tasks_take_turns_over_the_large_enough_groups(grouped, tmp_path):
    cfg = protocol.OneShotConfig(ways=3, tasks=4, held_out_groups=3, groups=("Alpha", "Beta", "Delta"))
    protocol.write_one_shot(grouped, tmp_path / "os", cfg)
    record = json.loads((tmp_path / "os" / "protocol.json").read_text())
    groups = [t["groups"] for t in record["tasks"]]
    assert record["held_out_groups"] == ["Alpha", "Beta", "Delta"]
    assert all(len(g) == 1 and g[0] in ("Alpha", "Beta") for g in groups)  # Delta has 2 classes < 3 ways
    assert groups[0] == groups[2] and groups[1] == groups[3] and groups[0] != groups[1]
    assert record["task_groups"] == "one group per task"


def test_one_shot_tasks_mix_groups_when_none_has_enough_classes(grouped, tmp_path):
    cfg = protocol.OneShotConfig(ways=5, tasks=5, held_out_groups=2, groups=("Beta", "Delta"))
    s = protocol.write_one_shot(grouped, tmp_path / "os", cfg)
    record = json.loads((tmp_path / "os" / "protocol.json").read_text())
    assert s.single_group_tasks == 0 and "several" in record["task_groups"]
    assert all(t["groups"] == ["Beta", "Delta"] for t in record["tasks"])  # 4 + 2 classes, 5 drawn: both


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ways": 8, "groups": ("Alpha", "Delta"), "held_out_groups": 2}, r"have 7 classes .* need 8"),
        ({"ways": 6, "groups": ("Alpha",), "held_out_groups": 1}, r"have 5 classes"),  # 'lonely' has 1 photo
        ({"ways": 2, "groups": ("Omega",), "held_out_groups": 1}, "unknown group"),
        ({"ways": 2, "held_out_groups": 5}, "leaves no training catalog"),
    ],
)
def test_one_shot_too_small_or_bad_groups_are_one_clear_error(grouped, tmp_path, kwargs, message):
    with pytest.raises(InputError, match=message) as err:
        protocol.write_one_shot(grouped, tmp_path / "os", protocol.OneShotConfig(**kwargs))
    assert err.value.path == grouped / "train.csv" and "\n" not in str(err.value)
    assert not (tmp_path / "os").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"ways": 1}, "ways"), ({"tasks": 0}, "tasks"), ({"held_out_groups": 0}, "held_out_groups"),
     ({"groups": ("A", "A"), "held_out_groups": 2}, "twice"), ({"groups": ("A",), "held_out_groups": 2}, "differs")],
)
def test_bad_one_shot_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        protocol.OneShotConfig(**kwargs).check()


def test_one_shot_same_seed_same_bytes_other_seed_other_tasks(grouped, tmp_path):
    cfg = protocol.OneShotConfig(ways=3, tasks=3, held_out_groups=2, seed=4)
    protocol.write_one_shot(grouped, tmp_path / "a", cfg)
    protocol.write_one_shot(grouped, tmp_path / "b", cfg, link="copy")
    protocol.write_one_shot(grouped, tmp_path / "c", protocol.OneShotConfig(ways=3, tasks=3, held_out_groups=2,
                                                                           seed=5))
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert a == b
    tasks = [k for k in a if k.startswith("task_") and k.endswith(("train.csv", "queries.csv"))]
    assert tasks and any(a[k] != c.get(k) for k in tasks)
    # A protocol folder may be replaced with --force, and only then.
    with pytest.raises(InputError, match="already exists"):
        protocol.write_one_shot(grouped, tmp_path / "a", cfg)
    protocol.write_one_shot(grouped, tmp_path / "a", cfg, force=True)
    assert _files(tmp_path / "a") == b


def test_one_shot_failure_midway_leaves_nothing_behind(grouped, tmp_path, monkeypatch):
    real, calls = protocol.place_file, []

    def flaky(src, dst, mode):
        calls.append(dst)
        if len(calls) == 30:
            raise OSError("disk full")
        return real(src, dst, mode)

    monkeypatch.setattr(protocol, "place_file", flaky)
    with pytest.raises(OSError, match="disk full"):
        protocol.write_one_shot(grouped, tmp_path / "out", protocol.OneShotConfig(ways=3, tasks=2))
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


def test_script_one_shot_mode_and_flags_of_the_other_mode(grouped, tmp_path):
    out = tmp_path / "p"
    res = _script("--data-dir", str(grouped), "--out", str(out), "--one-shot", "3", "--tasks", "2",
                  "--groups", "Alpha", "Beta")
    assert res.returncode == 0, res.stderr
    assert "held out: 2 groups (Alpha, Beta)" in res.stdout
    assert "2 x 3-way one-shot (2 from a single group)" in res.stdout
    assert len(_tasks(out)) == 2 and (out / "catalog" / "train.csv").is_file()
    res = _script("--data-dir", str(grouped), "--out", str(tmp_path / "q"), "--one-shot", "3", "--min-photos", "2")
    assert res.returncode == 2 and "--min-photos apply only without --one-shot" in res.stderr
    res = _script("--data-dir", str(grouped), "--out", str(tmp_path / "q"), "--tasks", "3")
    assert res.returncode == 2 and "--tasks need --one-shot" in res.stderr and not (tmp_path / "q").exists()
    res = _script("--data-dir", str(grouped), "--out", str(tmp_path / "q"), "--one-shot", "9")
    assert res.returncode == 2 and "need 9" in res.stderr and res.stderr.count("\n") == 1
    res = _script("--help")
    assert res.returncode == 0 and "--one-shot N" in res.stdout and "--held-out-groups 2" in res.stdout


@pytest.mark.skipif(not (OMNIGLOT / "train.csv").is_file(), reason="omniglot catalog not present")
def test_omniglot_ids_are_accepted_and_give_single_alphabet_tasks(tmp_path):
    cfg = protocol.OneShotConfig(ways=20, tasks=2, held_out_groups=2, seed=0)
    s = protocol.write_one_shot(OMNIGLOT, tmp_path / "omni", cfg, link="symlink")
    source = read_train_csv(OMNIGLOT / "train.csv")
    held = source[source["Id"].map(protocol.group_of).isin(s.held_out_groups)]
    assert s.catalog_photos == len(source) - len(held) and s.single_group_tasks == 2
    shots = read_train_csv(tmp_path / "omni" / "task_000" / "train.csv")
    assert len(shots) == 20 and shots["Id"].map(protocol.group_of).nunique() == 1


def test_class_rotations_add_turned_training_classes_and_leave_the_tasks_alone(grouped, tmp_path):
    from PIL import Image

    cfg = protocol.OneShotConfig(ways=3, tasks=4, held_out_groups=2, seed=1)
    plain = protocol.write_one_shot(grouped, tmp_path / "plain", cfg)
    turned = protocol.write_one_shot(grouped, tmp_path / "turned", replace(cfg, class_rotations=4))
    before = read_train_csv(tmp_path / "plain" / "catalog" / "train.csv")
    after = read_train_csv(tmp_path / "turned" / "catalog" / "train.csv")
    known = before[before["Id"] != NEW_WHALE]
    assert list(after["Image"][:len(before)]) == list(before["Image"])  # the catalog itself first, unchanged
    assert len(after) == len(before) + 3 * len(known) == len(before) + turned.rotated_photos
    assert turned.catalog_classes == 4 * plain.catalog_classes and plain.rotated_photos == 0
    ids = dict(zip(after["Image"], after["Id"]))
    folder = tmp_path / "turned" / "catalog" / "train"
    for name, ident in zip(known["Image"], known["Id"]):
        original = np.asarray(Image.open(folder / name))
        for k, degrees in ((1, 90), (2, 180), (3, 270)):
            rotated = protocol.rotated_name(name, degrees)
            assert ids[rotated] == f"{ident}@r{degrees}"  # a class of its own, in the same group
            assert protocol.group_of(ids[rotated]) == protocol.group_of(ident)
            np.testing.assert_array_equal(np.asarray(Image.open(folder / rotated)), np.rot90(original, k))
    for a, b in zip(_tasks(tmp_path / "plain"), _tasks(tmp_path / "turned"), strict=True):
        for part in ("train.csv", "truth.csv", "queries.csv"):
            assert (a / part).read_bytes() == (b / part).read_bytes()  # tasks are never turned
    half = protocol.write_one_shot(grouped, tmp_path / "half", replace(cfg, class_rotations=2))
    assert half.rotated_photos == len(known)
    with pytest.raises(ValueError, match="class_rotations must be one of 1, 2, 4"):
        replace(cfg, class_rotations=3).check()


def test_class_rotations_refuse_a_catalog_with_boxes(grouped, tmp_path):
    names = read_train_csv(grouped / "train.csv")["Image"]
    pd.DataFrame({"Image": names, "x0": 0, "y0": 0, "x1": 4, "y1": 4}).to_csv(grouped / "boxes.csv", index=False)
    with pytest.raises(InputError, match="class rotations") as err:
        protocol.write_one_shot(grouped, tmp_path / "os", protocol.OneShotConfig(ways=3, tasks=2, class_rotations=4))
    assert err.value.path == grouped / "boxes.csv" and not (tmp_path / "os").exists()

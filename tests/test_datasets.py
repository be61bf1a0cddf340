"""Dataset adapters on tiny fixtures in each real layout (see fixtures_datasets.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from clipfair.data import DATASETS, DatasetError, FaceDataset, HFReader, ImageError, load_dataset
from clipfair.utility.registry import RegistryError
from fixtures_datasets import (
    BLUE,
    GREEN,
    GREY,
    RED,
    YELLOW,
    close_to,
    hf_fairface_dataset,
    image_bytes,
    make_fairface,
    make_generic_csv,
    make_utkface,
    save_hf_to_disk,
    write_fairface_split,
    write_hf_parquet,
    write_image,
    write_text,
)

ALLOWED_RACES = "White, Black, Latino_Hispanic, East Asian, Southeast Asian, Indian, Middle Eastern"


def pixel(ds: FaceDataset, i: int) -> tuple[int, ...]:
    return ds.load_image(i).getpixel((4, 4))


def colors_match(ds: FaceDataset, colors: list[tuple[int, int, int]]) -> bool:
    return len(ds) == len(colors) and all(close_to(pixel(ds, i), c) for i, c in enumerate(colors))


# ------------------------------------------------------------------------ registry


def test_registry_names_and_unknown_adapter():
    assert {"fairface", "hf", "utkface", "csv"} <= set(DATASETS.names())
    with pytest.raises(RegistryError,
                       match=r"unknown dataset 'nope'; available: .*csv, .*fairface, .*hf"):
        load_dataset("nope")


def test_unknown_argument_lists_accepted(tmp_path):
    with pytest.raises(DatasetError,
                       match=r"dataset 'fairface': .*'rot'.*accepted arguments: root, split"):
        load_dataset("fairface", rot=str(tmp_path))


# ------------------------------------------------------------------------ FairFace


@pytest.fixture
def ff_root(tmp_path: Path) -> Path:
    return make_fairface(tmp_path / "fairface")


def test_fairface_val_table(ff_root):
    ds = load_dataset("fairface", root=str(ff_root), padding="0.25")
    t = ds.table
    assert ds.name == "fairface"
    assert t["image_id"].tolist() == ["val/1.jpg", "val/2.jpg", "val/3.jpg", "val/4.jpg"]
    assert t["race"].tolist() == ["White", "East Asian", "Latino_Hispanic", "Black"]
    assert t["gender"].tolist() == ["Male", "Female", "Male", "Female"]
    assert t["age"].tolist() == ["20-29", "3-9", "more than 70", "50-59"]
    assert t["race_binary"].tolist() == ["White", "Non-White", "Non-White", "Non-White"]
    assert t["service_test"].tolist() == ["True", "False", "True", "False"]
    assert t["file"].tolist() == t["image_id"].tolist()
    assert list(t.columns[:5]) == ["image_id", "race", "gender", "age", "race_binary"]
    assert ds.skipped == {}
    assert ds.source["split"] == "val" and ds.source["padding"] == "0.25"
    assert ds.source["root"] == str(ff_root)


def test_fairface_images_follow_rows(ff_root):
    ds = load_dataset("fairface", root=str(ff_root))
    assert colors_match(ds, [RED, GREEN, BLUE, YELLOW])
    assert ds.read_bytes(2) == (ff_root / "val" / "3.jpg").read_bytes()
    assert ds.reader.describe(3) == str(ff_root / "val" / "4.jpg")


def test_fairface_train_split_and_validation_alias(ff_root):
    train = load_dataset("fairface", root=str(ff_root), split="train")
    assert train.table["race"].tolist() == ["Indian", "Southeast Asian"]
    assert train.table["age"].tolist() == ["30-39", "0-2"]
    assert colors_match(train, [RED, GREEN])
    alias = load_dataset("fairface", root=str(ff_root), split="validation")
    assert alias.source["split"] == "val" and len(alias) == 4
    with pytest.raises(DatasetError, match=r"no split 'test'; available splits: train, val"):
        load_dataset("fairface", root=str(ff_root), split="test")


def test_fairface_limit(ff_root):
    ds = load_dataset("fairface", root=str(ff_root), limit=2)
    assert ds.table["image_id"].tolist() == ["val/1.jpg", "val/2.jpg"]
    assert ds.source["limit"] == 2
    assert close_to(pixel(ds, 1), GREEN)
    with pytest.raises(IndexError):
        ds.read_bytes(2)
    with pytest.raises(DatasetError, match="non-negative"):
        load_dataset("fairface", root=str(ff_root), limit=-1)


def test_fairface_missing_csv_explains_download(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_dataset("fairface", root=str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path / "fairface_label_val.csv") in msg
    assert "https://github.com/joojs/fairface" in msg and "CC BY 4.0" in msg


def test_fairface_needs_root():
    with pytest.raises(DatasetError, match=r"needs dataset.root"):
        load_dataset("fairface")


def test_fairface_missing_column_names_file_and_columns(tmp_path):
    csv = write_fairface_split(tmp_path, "val", ["val/1.jpg,20-29,Male,True"],
                               header="file,age,gender,service_test")
    with pytest.raises(DatasetError) as e:
        load_dataset("fairface", root=str(tmp_path))
    msg = str(e.value)
    assert str(csv) in msg
    assert "missing column(s) 'race'" in msg
    assert "columns found: file, age, gender, service_test" in msg


def test_fairface_unknown_label_names_row_and_allowed_values(tmp_path):
    csv = write_fairface_split(tmp_path, "val", ["val/1.jpg,20-29,Male,White,True",
                                                 "val/2.jpg,20-29,Male,Martian,True"])
    with pytest.raises(DatasetError) as e:
        load_dataset("fairface", root=str(tmp_path))
    msg = str(e.value)
    assert f"{csv} row 2 (line 3)" in msg
    assert "column 'race'" in msg and "'Martian'" in msg
    assert f"allowed values: {ALLOWED_RACES}" in msg
    assert "on_error=skip" in msg


def test_fairface_skip_counts_bad_rows_and_logs(tmp_path, caplog):
    write_fairface_split(tmp_path, "val", ["val/1.jpg,20-29,Male,Martian,True",
                                           "val/2.jpg,20-29,Female,Black,True",
                                           "val/3.jpg,200,Female,Black,True",
                                           "val/4.jpg,0-2,Male,White,False"])
    (tmp_path / "val" / "4.jpg").unlink()
    with caplog.at_level(logging.WARNING, logger="clipfair.data.adapters"):
        ds = load_dataset("fairface", root=str(tmp_path), on_error="skip")
    assert ds.skipped == {"missing_image": 1, "unknown_age": 1, "unknown_race": 1}
    assert ds.table["image_id"].tolist() == ["val/2.jpg"]
    assert colors_match(ds, [GREEN])  # row 1 of the CSV
    assert "skipped 3 rows: missing_image=1, unknown_age=1, unknown_race=1" in caplog.text


def test_fairface_missing_images_raise_with_list_and_count(tmp_path):
    write_fairface_split(tmp_path, "val", [f"val/{k}.jpg,20-29,Male,White,True" for k in range(7)])
    for k in range(7):
        (tmp_path / "val" / f"{k}.jpg").unlink()
    with pytest.raises(DatasetError) as e:
        load_dataset("fairface", root=str(tmp_path))
    msg = str(e.value)
    assert "image files not found" in msg and str(tmp_path / "val" / "0.jpg") in msg
    assert "(7 in total)" in msg and str(tmp_path / "val" / "6.jpg") not in msg


def test_fairface_duplicate_files(tmp_path):
    write_fairface_split(tmp_path, "val", ["val/1.jpg,20-29,Male,White,True",
                                           "val/2.jpg,20-29,Male,White,True",
                                           "val/1.jpg,3-9,Female,Black,False"])
    with pytest.raises(DatasetError,
                       match=r"duplicate image ids .*'val/1.jpg' at .* row 1 .* row 3"):
        load_dataset("fairface", root=str(tmp_path), on_error="skip")


def test_fairface_outside_root_refused_unless_allowed(tmp_path):
    root = tmp_path / "ff"
    write_image(tmp_path / "outside.jpg", BLUE)
    write_image(tmp_path / "abs.jpg", YELLOW)
    write_fairface_split(root, "val", ["../outside.jpg,20-29,Male,White,True",
                                       f"{tmp_path / 'abs.jpg'},3-9,Female,Black,False"],
                         images=False)
    with pytest.raises(DatasetError) as e:
        load_dataset("fairface", root=str(root))
    msg = str(e.value)
    assert "outside the dataset root" in msg and "'../outside.jpg" in msg
    assert "(2 in total)" in msg and "allow_outside_root=true" in msg
    ds = load_dataset("fairface", root=str(root), allow_outside_root=True)
    assert colors_match(ds, [BLUE, YELLOW])


def test_fairface_bad_on_error(ff_root):
    with pytest.raises(DatasetError, match=r"on_error must be one of raise, skip; got 'ignore'"):
        load_dataset("fairface", root=str(ff_root), on_error="ignore")


def test_fairface_empty_csv_is_an_error(tmp_path):
    write_fairface_split(tmp_path, "val", [])
    with pytest.raises(DatasetError, match="no usable rows"):
        load_dataset("fairface", root=str(tmp_path))


# ------------------------------------------------------------------- Hugging Face

HF_RACES = ["East Asian", "White", "Latino_Hispanic", "Black"]  # ints 0, 3, 5, 2
HF_GENDERS = ["Male", "Female", "Male", "Female"]
HF_AGES = ["20-29", "more than 70", "3-9", "0-2"]


@pytest.fixture(scope="module")
def hf_disk(tmp_path_factory) -> Path:
    return save_hf_to_disk(tmp_path_factory.mktemp("hf") / "fairface_disk")


def test_hf_save_to_disk_maps_class_labels(hf_disk):
    ds = load_dataset("hf", path=str(hf_disk), split="validation")
    t = ds.table
    assert t["image_id"].tolist() == [f"validation/{k}" for k in (0, 1, 2, 3)]
    assert t["race"].tolist() == HF_RACES
    assert t["gender"].tolist() == HF_GENDERS
    assert t["age"].tolist() == HF_AGES
    assert t["race_binary"].tolist() == ["Non-White", "White", "Non-White", "Non-White"]
    assert t["service_test"].tolist() == [True, False, True, False]
    assert "image" not in t.columns
    assert ds.source["format"] == "save_to_disk"
    assert colors_match(ds, [RED, GREEN, BLUE, YELLOW])
    assert ds.read_bytes(0)[:2] == b"\xff\xd8"  # encoded JPEG, not decoded pixels
    assert ds.reader.describe(2) == f"{hf_disk}[validation][2]"


def test_hf_split_selection_alias_and_error(hf_disk):
    train = load_dataset("hf", path=str(hf_disk), split="train")
    assert train.table["race"].tolist() == HF_RACES[:2] and colors_match(train, [RED, GREEN])
    assert load_dataset("hf", path=str(hf_disk), split="val").source["split"] == "validation"
    with pytest.raises(DatasetError, match=r"no split 'test'; available splits: validation, train"):
        load_dataset("hf", path=str(hf_disk), split="test")


def test_hf_limit_and_subset_keep_row_numbers(hf_disk):
    ds = load_dataset("hf", path=str(hf_disk), limit=3)
    assert len(ds) == 3 and ds.table["race"].tolist() == HF_RACES[:3]
    sub = ds.reader.subset([2, 0])
    assert isinstance(sub, HFReader) and sub.describe(0).endswith("[validation][2]")
    assert sub.read(0) == ds.read_bytes(2)


def test_hf_single_dataset_folder(tmp_path):
    hf_fairface_dataset().save_to_disk(str(tmp_path / "single"))
    ds = load_dataset("hf", path=str(tmp_path / "single"), split="test")
    assert ds.table["race"].tolist() == HF_RACES
    assert ds.table["image_id"].tolist()[0] == "test/0"


def test_hf_parquet_folder(tmp_path):
    folder = write_hf_parquet(tmp_path / "pq")
    ds = load_dataset("hf", path=str(folder), split="validation", cache_dir=str(tmp_path / "cache"))
    assert ds.source["format"] == "parquet"
    assert ds.table["race"].tolist() == HF_RACES
    assert ds.table["age"].tolist() == HF_AGES
    assert colors_match(ds, [RED, GREEN, BLUE, YELLOW])
    train = load_dataset("hf", path=str(folder), split="train", cache_dir=str(tmp_path / "cache"))
    assert train.table["gender"].tolist() == HF_GENDERS[:2]
    files = load_dataset("hf", path=str(folder), split="test", cache_dir=str(tmp_path / "cache"),
                         data_files="data/train-00000-of-00001.parquet")
    assert files.table["image_id"].tolist() == ["test/0", "test/1"]


def test_hf_parquet_file_and_hydra_data_files(tmp_path):
    from omegaconf import OmegaConf

    folder = write_hf_parquet(tmp_path / "pq")
    one = load_dataset("hf", path=str(folder / "data" / "train-00000-of-00001.parquet"),
                       cache_dir=str(tmp_path / "cache"))
    assert one.table["race"].tolist() == HF_RACES[:2]
    cfg = OmegaConf.create({"files": ["data/validation-00000-of-00001.parquet"]})
    ds = load_dataset("hf", path=str(folder), data_files=cfg.files,
                      cache_dir=str(tmp_path / "cache"))
    assert ds.source["data_files"] == ["data/validation-00000-of-00001.parquet"]
    assert type(ds.source["data_files"]) is list and len(ds) == 4


def test_hf_missing_local_path(tmp_path):
    with pytest.raises(DatasetError, match="looks like a local path but does not exist"):
        load_dataset("hf", path=str(tmp_path / "nope"))


def test_hf_not_a_dataset_folder(tmp_path):
    write_text(tmp_path / "notes.txt", ["hello"])
    with pytest.raises(DatasetError,
                       match="neither a save_to_disk folder .* nor a folder of .parquet"):
        load_dataset("hf", path=str(tmp_path))


def test_hf_string_labels_integer_ages_and_id_column(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({
        "img": [{"bytes": image_bytes(GREY, fmt="PNG"), "path": None},
                {"bytes": image_bytes(RED, fmt="PNG"), "path": None}],
        "Ethnicity": ["black", " middle eastern "],
        "sex": ["F", "man"],
        "years": [9, 45],
        "uid": ["a7", "b8"],
    }, features=datasets.Features({
        "img": datasets.Image(), "Ethnicity": datasets.Value("string"),
        "sex": datasets.Value("string"), "years": datasets.Value("int32"),
        "uid": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "d"))
    out = load_dataset("hf", path=str(tmp_path / "d"), image_column="img", race_column="ethnicity",
                       gender_column="sex", age_column="years", id_column="uid")
    assert out.table["image_id"].tolist() == ["a7", "b8"]
    assert out.table["race"].tolist() == ["Black", "Middle Eastern"]
    assert out.table["gender"].tolist() == ["Female", "Male"]
    assert out.table["age"].tolist() == ["3-9", "40-49"]
    assert out.table["years"].tolist() == [9, 45]
    assert colors_match(out, [GREY, RED])


def test_hf_missing_column_lists_found(hf_disk):
    with pytest.raises(DatasetError) as e:
        load_dataset("hf", path=str(hf_disk), race_column="ethnicity")
    msg = str(e.value)
    assert "missing column(s) 'ethnicity'" in msg
    assert "columns found: image, age, gender, race, service_test" in msg


def test_hf_unknown_class_name_raise_and_skip(tmp_path):
    import datasets

    base = hf_fairface_dataset()
    names = ["Other" if n == "Black" else n for n in base.features["race"].names]
    bad = base.cast_column("race", datasets.ClassLabel(names=names))  # row 3 is race 2
    bad.save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DatasetError) as e:
        load_dataset("hf", path=str(tmp_path / "bad"))
    msg = str(e.value)
    assert f"{tmp_path / 'bad'}[validation][3], column 'race'" in msg
    assert "'Other'" in msg and ALLOWED_RACES in msg
    ds = load_dataset("hf", path=str(tmp_path / "bad"), on_error="skip")
    assert ds.skipped == {"unknown_race": 1}
    assert ds.table["image_id"].tolist() == ["validation/0", "validation/1", "validation/2"]
    assert ds.reader.describe(2).endswith("[validation][2]")


def test_hf_integer_race_without_class_names(tmp_path):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "race": datasets.Value("int64"),
                                  "gender": datasets.Value("string"),
                                  "age": datasets.Value("int64")})
    datasets.Dataset.from_dict({"image": [{"bytes": image_bytes(RED), "path": None}],
                                "race": [3], "gender": ["Male"], "age": [20]},
                               features=features).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(DatasetError, match="column 'race' .* holds numbers without class names"):
        load_dataset("hf", path=str(tmp_path / "d"))


def test_hf_reader_reads_paths_and_reports_empty_rows(tmp_path):
    import datasets

    write_image(tmp_path / "x.jpg", BLUE)
    ds = datasets.Dataset.from_dict(
        {"image": [str(tmp_path / "x.jpg"), None]},
        features=datasets.Features({"image": datasets.Image()}))
    reader = HFReader.from_dataset(ds, "image", "local", "train")
    assert reader.read(0) == (tmp_path / "x.jpg").read_bytes()
    with pytest.raises(ImageError, match=r"local\[train\]\[1\]: no image stored"):
        reader.read(1)


def test_hf_hub_streaming_takes_limit_rows(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return hf_fairface_dataset().to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load_dataset("hf", streaming=True, limit=2)
    path, name, kwargs = calls[0]
    assert (path, name, kwargs["split"], kwargs["streaming"]) == (
        "HuggingFaceM4/FairFace", "0.25", "validation", True)
    assert ds.source["format"] == "hub-streaming"
    assert ds.table["race"].tolist() == HF_RACES[:2]
    assert colors_match(ds, [RED, GREEN])


def test_hf_hub_failure_explains_offline_options(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DatasetError, match=r"cannot load .*'HuggingFaceM4/FairFace'.*"
                                           r"ConnectionError: no network.*save_to_disk"):
        load_dataset("hf")


# ------------------------------------------------------------------------- UTKFace

UTK_IDS = ["1_0_2_20161219140623097.jpg.chip.jpg", "25_1_0_20170116000000000.jpg.chip.jpg",
           "72_0_4_20170117000000001.jpg.chip.jpg", "part2/45_1_3_20170118000000002.jpg"]


def test_utkface_parses_names_and_skips_malformed(tmp_path, caplog):
    root = make_utkface(tmp_path / "utk")
    with caplog.at_level(logging.WARNING, logger="clipfair.data.adapters"):
        ds = load_dataset("utkface", root=str(root))
    t = ds.table
    assert ds.skipped == {"malformed_filename": 3}
    assert "malformed_filename=3" in caplog.text
    assert t["image_id"].tolist() == UTK_IDS
    assert t["race"].tolist() == ["Asian", "White", "Others", "Indian"]
    assert t["race_code"].tolist() == [2, 0, 4, 3]
    assert t["race_binary"].tolist() == ["Non-White", "White", "Non-White", "Non-White"]
    assert t["gender"].tolist() == ["Male", "Female", "Male", "Female"]
    assert t["age"].tolist() == ["0-2", "20-29", "more than 70", "40-49"]
    assert t["age_years"].tolist() == [1, 25, 72, 45]
    assert colors_match(ds, [RED, GREEN, BLUE, YELLOW])


def test_utkface_raise_names_malformed_file(tmp_path):
    root = make_utkface(tmp_path / "utk")
    with pytest.raises(DatasetError,
                       match=r"39_1_20170116174525125\.jpg\.chip\.jpg.*\(3 in total\)"):
        load_dataset("utkface", root=str(root), on_error="raise")


def test_utkface_non_recursive_limit_and_bad_code(tmp_path):
    root = make_utkface(tmp_path / "utk", ["30_0_7_20170101000000000.jpg", UTK_IDS[1], UTK_IDS[3]])
    ds = load_dataset("utkface", root=str(root), recursive=False)
    assert ds.skipped == {"unknown_race": 1}
    assert ds.table["image_id"].tolist() == [UTK_IDS[1]]
    assert colors_match(ds, [GREEN])
    assert len(load_dataset("utkface", root=str(root), limit=1)) == 1
    with pytest.raises(DatasetError, match=r"30_0_7_20170101000000000\.jpg, column 'race_code'.*"
                                           r"unknown code 7; allowed codes: 0 White, 1 Black"):
        load_dataset("utkface", root=str(root), on_error="raise")


def test_utkface_missing_or_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="UTKFace folder not found"):
        load_dataset("utkface", root=str(tmp_path / "nope"))
    with pytest.raises(DatasetError, match="no .jpg/.jpeg/.png files"):
        load_dataset("utkface", root=str(tmp_path))


# --------------------------------------------------------------------- generic CSV


def test_csv_custom_columns_age_years_and_root(tmp_path):
    csv = make_generic_csv(tmp_path)
    ds = load_dataset("csv", path=str(csv), root=str(tmp_path), image_column="photo",
                      race_column="ethnicity", gender_column="sex", age_column="years",
                      id_column="subject", age_years=True)
    t = ds.table
    assert t["image_id"].tolist() == ["s1", "s2", "s3"]
    assert t["race"].tolist() == ["Black", "Indian", "White"]
    assert t["gender"].tolist() == ["Female", "Male", "Female"]
    assert t["age"].tolist() == ["30-39", "3-9", "more than 70"]
    assert t["race_binary"].tolist() == ["Non-White", "Non-White", "White"]
    assert t["ethnicity"].tolist() == ["Black", "Indian", "White"]  # raw column kept
    assert t["photo"].tolist() == ["imgs/a.png", "imgs/b.png", "imgs/c.png"]
    assert colors_match(ds, [RED, GREEN, BLUE])
    assert ds.source["root"] == str(tmp_path)


def test_csv_absent_attributes_and_default_root(tmp_path):
    write_image(tmp_path / "p" / "1.png", RED)
    write_image(tmp_path / "p" / "2.png", GREEN)
    csv = write_text(tmp_path / "labels.csv", ["img,sex,race", "p/2.png,f,x", "p/1.png,m,y"])
    ds = load_dataset("csv", path=str(csv), image_column="img", race_column=None,
                      gender_column="sex", age_column=None)
    assert ds.attributes == ["gender"]
    assert "race_binary" not in ds.table.columns and "age" not in ds.table.columns
    assert ds.table["image_id"].tolist() == ["p/2.png", "p/1.png"]
    assert ds.table["gender"].tolist() == ["Female", "Male"]
    assert ds.table["race_source"].tolist() == ["x", "y"]  # an unmapped 'race' column is renamed
    assert colors_match(ds, [GREEN, RED])


def test_csv_age_years_must_be_numbers(tmp_path):
    write_image(tmp_path / "a.jpg", RED)
    csv = write_text(tmp_path / "l.csv", ["file,age", "a.jpg,old"])
    with pytest.raises(DatasetError,
                       match=r"row 1 \(line 2\), column 'age': age 'old' is not a number"):
        load_dataset("csv", path=str(csv), race_column=None, gender_column=None, age_years=True)


def test_csv_missing_file_and_column(tmp_path):
    with pytest.raises(DatasetError, match="label CSV not found"):
        load_dataset("csv", path=str(tmp_path / "none.csv"))
    csv = write_text(tmp_path / "l.csv", ["path,race", "a.jpg,White"])
    with pytest.raises(DatasetError, match=r"l\.csv: missing column\(s\) 'file', 'gender', 'age'; "
                                           r"columns found: path, race"):
        load_dataset("csv", path=str(csv))


# ---------------------------------------------------------- declared attributes

from clipfair.data import (  # noqa: E402
    Attribute,
    DerivedAttribute,
    LabelError,
    RACE_BINARY_ATTRIBUTE,
    SliceError,
    parse_attributes,
)
from fixtures_datasets import MONK_VALUES, REGIONS, make_custom_csv  # noqa: E402

CUSTOM = {"skin_tone": {"column": "monk", "values": list(MONK_VALUES)},
          "region": {"values": list(REGIONS), "mapping": {"EU": "Europe"}}}
AGE_BAND = {"age_band": {"from": "age", "groups": {
    "0-19": ["0-2", "3-9", "10-19"], "20-59": ["20-29", "30-39", "40-49", "50-59"],
    "60+": ["60-69", "more than 70"]}}}


def test_csv_declares_custom_attributes(tmp_path):
    csv = make_custom_csv(tmp_path)
    raw = pd.read_csv(csv, dtype=str, keep_default_na=False)
    ds = load_dataset("csv", path=str(csv), race_column=None, attributes=CUSTOM)
    assert ds.attributes == ["gender", "age", "skin_tone", "region"]
    assert [type(a).__name__ for a in ds.declared] == ["Attribute"] * 4
    assert ds.value_orders()["skin_tone"] == MONK_VALUES
    assert ds.value_orders()["region"] == REGIONS
    t = ds.table
    assert t["skin_tone"].tolist() == raw["monk"].tolist()
    assert t["monk"].tolist() == raw["monk"].tolist()  # the raw column is kept
    # case canonicalised onto the declared spelling; empty cells are missing values
    expected_region = [next((r for r in REGIONS if r.lower() == v.lower()), None) if v else None
                       for v in raw["region"]]
    assert [None if pd.isna(v) else v for v in t["region"]] == expected_region
    assert t["region"].isna().sum() == (raw["region"] == "").sum() > 0
    assert "race_binary" not in t.columns  # no race, so no default race_binary
    assert ds.source["attributes"] == {"gender": "gender", "age": "age", "skin_tone": "monk",
                                       "region": "region"}


def test_custom_attribute_value_not_declared_raises_or_skips(tmp_path):
    write_image(tmp_path / "a.png", RED)
    write_image(tmp_path / "b.png", GREEN)
    csv = write_text(tmp_path / "l.csv", ["file,region", "a.png,EU", "b.png,Atlantis"])
    with pytest.raises(DatasetError, match=r"row 2 \(line 3\), column 'region': unknown region value "
                                           r"'Atlantis'; allowed values: Europe, Africa, Asia, Americas"):
        load_dataset("csv", path=str(csv), race_column=None, gender_column=None, age_column=None,
                     attributes={"region": CUSTOM["region"]})
    ds = load_dataset("csv", path=str(csv), race_column=None, gender_column=None, age_column=None,
                      attributes={"region": CUSTOM["region"]}, on_error="skip")
    assert ds.table["region"].tolist() == ["Europe"]  # mapped EU -> Europe
    assert ds.skipped == {"unknown_region": 1}


def test_undeclared_values_are_kept_as_text_and_plain_column_form(tmp_path):
    write_image(tmp_path / "a.png", RED)
    write_image(tmp_path / "b.png", GREEN)
    csv = write_text(tmp_path / "l.csv", ["file,job", "a.png, nurse ", "b.png,Pilot"])
    ds = load_dataset("csv", path=str(csv), race_column=None, gender_column=None, age_column=None,
                      attributes={"occupation": "job"})
    assert ds.attributes == ["occupation"]
    assert ds.table["occupation"].tolist() == ["nurse", "Pilot"]
    assert ds.value_orders() == {}


def test_builtin_name_in_attributes_keeps_canonical_values(tmp_path):
    csv = make_generic_csv(tmp_path)
    ds = load_dataset("csv", path=str(csv), root=str(tmp_path), image_column="photo",
                      race_column="nope", gender_column=None, age_column=None,
                      attributes={"race": "ethnicity", "sex": "sex"})  # replaces race_column
    assert ds.table["race"].tolist() == ["Black", "Indian", "White"]
    assert ds.table["sex"].tolist() == ["F", "Male", "Woman"]  # not a built-in: raw text
    assert ds.attributes == ["race", "sex", "race_binary"]


@pytest.mark.parametrize("spec, message", [
    ({"x": {"colum": "a"}}, r"dataset.attributes.x: unknown key\(s\) \['colum'\]"),
    ({"x": {"values": ["a", "a"]}}, "duplicate values"),
    ({"x": {"values": ["a"], "mapping": {"b": "c"}}}, r"mapping targets \['c'\] are not among its values"),
    ({"a+b": "col"}, "contains '\\+'"),
    ({"score": "col"}, "attribute name 'score' is reserved"),
])
def test_bad_attribute_declarations(tmp_path, spec, message):
    with pytest.raises(LabelError, match=message):
        parse_attributes(spec)
    csv = write_text(tmp_path / "l.csv", ["file,x", "a.png,1"])
    with pytest.raises(DatasetError, match=message):
        load_dataset("csv", path=str(csv), race_column=None, gender_column=None, age_column=None,
                     attributes=spec)


def test_fairface_declarations_and_race_binary_is_a_derived_attribute(ff_root):
    ds = load_dataset("fairface", root=str(ff_root))
    assert ds.attributes == ["race", "gender", "age", "race_binary"]
    rb = ds.attribute("race_binary")
    assert isinstance(rb, DerivedAttribute) and rb is RACE_BINARY_ATTRIBUTE
    assert (rb.source, rb.values) == ("race", ("White", "Non-White"))
    assert ds.value_orders()["race"][0] == "White" and ds.value_orders()["age"][-1] == "more than 70"
    assert ds.label_attributes == ["race", "gender", "age"]


def test_derived_age_band(ff_root):
    ds = load_dataset("fairface", root=str(ff_root), derived=AGE_BAND)
    groups = AGE_BAND["age_band"]["groups"]
    by_hand = [next(g for g, vs in groups.items() if a in vs) for a in ds.table["age"]]
    assert ds.table["age_band"].tolist() == by_hand == ["20-59", "0-19", "60+", "20-59"]
    assert ds.attributes == ["race", "gender", "age", "race_binary", "age_band"]
    assert ds.value_orders()["age_band"] == ("0-19", "20-59", "60+")
    assert len(ds.limit(2)) == 2 and ds.limit(2).attributes == ds.attributes  # declarations travel
    assert ds.sample(3, seed=1).value_orders() == ds.value_orders()


def test_derived_other_group_and_user_race_binary(tmp_path):
    root = make_utkface(tmp_path / "utk")
    ds = load_dataset("utkface", root=str(root), derived={
        "asian": {"from": "race", "groups": {"Asian": ["Asian"]}, "other": "not Asian"},
        "race_binary": {"from": "race", "groups": {"Black": ["Black"]}, "other": "not Black"}})
    assert ds.table["race"].tolist() == ["Asian", "White", "Others", "Indian"]
    assert ds.table["asian"].tolist() == ["Asian", "not Asian", "not Asian", "not Asian"]
    assert ds.table["race_binary"].tolist() == ["not Black"] * 4  # the user's replaces the default
    assert ds.attributes.count("race_binary") == 1


@pytest.mark.parametrize("derived, error, message", [
    ({"band": {"from": "agee", "groups": {"a": ["0-2"]}}}, SliceError,
     r"derived attribute 'band': dataset 'fairface' has no attribute 'agee' to derive it from; "
     r"its attributes: race, gender, age, race_binary"),
    ({"band": {"from": "age", "groups": {"young": ["0-2", "3-9"]}}}, DatasetError,
     r"values of 'age' in no group: '10-19', .*'more than 70'; list them in a group or add an 'other'"),
    ({"band": {"from": "age", "groups": {"young": ["0-2", "3-10"]}, "other": "rest"}}, DatasetError,
     r"'3-10' is not a value of 'age'"),
    ({"band": {"from": "age", "groups": {"a": ["0-2"], "b": ["0-2"]}, "other": "c"}}, DatasetError,
     r"value '0-2' is in both groups 'a' and 'b'"),
    ({"band": {"groups": {"a": ["0-2"]}}}, DatasetError, r"dataset.derived.band: 'from'"),
    ({"band": {"from": "age", "group": {}}}, DatasetError, r"unknown key\(s\) \['group'\]"),
    ({"age": {"from": "age", "groups": {"a": ["0-2"]}, "other": "b"}}, DatasetError,
     r"derived attribute 'age' would replace the attribute 'age' of dataset 'fairface'"),
])
def test_derived_errors_name_the_problem(ff_root, derived, error, message):
    with pytest.raises(error, match=message):
        load_dataset("fairface", root=str(ff_root), derived=derived)


def test_derived_from_undeclared_values_checks_observed_values(tmp_path):
    csv = make_custom_csv(tmp_path, n=20)
    spec = {"skin": {"column": "monk"}}
    band = {"from": "skin", "groups": {"light": ["1", "2", "3"], "medium": ["4", "5", "6", "7"]}}
    with pytest.raises(DatasetError, match=r"values of 'skin' in no group: '(8|9|10)'"):
        load_dataset("csv", path=str(csv), race_column=None, attributes=spec, derived={"band": band})
    ds = load_dataset("csv", path=str(csv), race_column=None, attributes=spec,
                      derived={"band": {**band, "other": "dark"}})
    exp = ["light" if int(v) <= 3 else "medium" if int(v) <= 7 else "dark" for v in ds.table["monk"]]
    assert ds.table["band"].tolist() == exp


def test_hf_custom_attributes_numbers_and_class_labels(tmp_path):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "monk": datasets.Value("int64"),
                                  "income": datasets.ClassLabel(names=["low", "mid", "high"]),
                                  "gender": datasets.Value("string")})
    datasets.Dataset.from_dict({"image": [{"bytes": image_bytes(c), "path": None} for c in (RED, GREEN, BLUE)],
                                "monk": [3, 10, 1], "income": [2, 0, 1], "gender": ["m", "f", "f"]},
                               features=features).save_to_disk(str(tmp_path / "d"))
    ds = load_dataset("hf", path=str(tmp_path / "d"), race_column=None, age_column=None,
                      attributes={"skin_tone": {"column": "monk", "values": list(MONK_VALUES)},
                                  "income": {"values": ["low", "mid", "high"]}})
    assert ds.table["skin_tone"].tolist() == ["3", "10", "1"]
    assert ds.table["income"].tolist() == ["high", "low", "mid"]
    assert ds.table["gender"].tolist() == ["Male", "Female", "Female"]
    assert ds.value_orders()["income"] == ("low", "mid", "high")


def test_attribute_objects_directly():
    a = Attribute("tone", values=("light", "dark"), mapping={"pale": "light"})
    assert a.convert(" LIGHT ") == "light" and a.convert("pale") == "light" and a.convert("") is None
    with pytest.raises(LabelError, match="unknown tone value 'grey'; allowed values: light, dark"):
        a.convert("grey", "row 3")
    assert RACE_BINARY_ATTRIBUTE.group_of("Black") == "Non-White"

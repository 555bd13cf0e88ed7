"""``format: csv``: one table with a split column or one table per split; what users get wrong, refused in one line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from promptbench.data.formats import write_tiny_image
from promptbench.data.preflight import preflight
from promptbench.data.readers import read_dataset
from promptbench.data.records import Record

CLASSES = ["benign", "malignant"]
TABLE = """path,label,split
a.png,benign,train
b.png,malignant,train
c.png,benign,valid
d.png,malignant,test
e.png,benign,test
"""


def dataset(tmp_path: Path, text: str = TABLE, name: str = "labels.csv", images: tuple[str, ...] = (), **cfg: Any
            ) -> dict[str, Any]:
    """``tmp_path/ds/<name>`` holding ``text``, every image it (or ``images``) names under ``tmp_path/ds``."""
    base = tmp_path / "ds"
    base.mkdir(exist_ok=True)
    (base / name).write_text(text, encoding="utf-8")
    for i, rel in enumerate(images or re.findall(r"[\w/]+\.png", text)):
        write_tiny_image(base / rel, 20 * i)
    return {"format": "csv", "root": str(tmp_path), "folder": "ds", "csv": name, **cfg}


def one_line_error(cfg: dict[str, Any], match: str, exc: type[Exception] = ValueError) -> str:
    with pytest.raises(exc) as err:
        read_dataset(cfg)
    msg = str(err.value)
    assert "\n" not in msg and re.search(match, msg), msg
    return msg


def test_one_table_with_a_split_column(tmp_path: Path) -> None:
    splits = read_dataset(dataset(tmp_path, classnames=["malignant", "benign"]))
    assert splits.format == "csv" and splits.classnames == ["malignant", "benign"]  # classnames order wins
    assert splits.train == [Record("a.png", 1), Record("b.png", 0)]  # table order
    assert splits.val == [Record("c.png", 1)]  # "valid" is val by default
    assert [r.key for r in splits.test] == ["d.png", "e.png"]
    assert splits.image_root == tmp_path / "ds" and splits.source == tmp_path / "ds" / "labels.csv"
    assert read_dataset(dataset(tmp_path)).classnames == CLASSES  # no classnames: sorted names
    assert read_dataset(dataset(tmp_path)).split_hash == read_dataset(dataset(tmp_path)).split_hash


def test_split_values_columns_delimiter_and_image_root_are_configurable(tmp_path: Path) -> None:
    text = "Image;Finding;Fold\na.png;0;0\nb.png;1;1\nc.png;1;2\nd.png;0;2\n"
    cfg = dataset(tmp_path, text, "meta.txt", images=("img/a.png", "img/b.png", "img/c.png", "img/d.png"),
                  delimiter=";", path_column="Image", label_column="Finding", split_column="Fold",
                  split_values={"train": [0, 1], "test": 2}, image_root="img", classnames=CLASSES)
    splits = read_dataset(OmegaConf.create(cfg))  # a DictConfig, as Hydra passes it
    assert splits.image_root == tmp_path / "ds" / "img"
    assert splits.train == [Record("a.png", 0), Record("b.png", 1)] and splits.val == []
    assert [r.label for r in splits.test] == [1, 0]
    assert read_dataset({**cfg, "image_root": str(tmp_path / "ds" / "img")}).split_hash == splits.split_hash


def test_one_table_per_split_and_a_missing_val(tmp_path: Path) -> None:
    base = tmp_path / "ds"
    dataset(tmp_path, "path,label\nx/1.png,b\nx/2.png,a\n", "train.csv")
    dataset(tmp_path, "path,label\nx/3.png,a\nx/4.png,b\n", "test.csv")
    cfg = {"format": "csv", "root": str(tmp_path), "folder": "ds",
           "csv_files": {"train": "train.csv", "test": str(base / "test.csv")}}
    splits = read_dataset(cfg)
    assert splits.classnames == ["a", "b"] and splits.val == []
    assert splits.train == [Record("x/1.png", 1), Record("x/2.png", 0)] and len(splits.test) == 2
    assert splits.source == base  # several tables: the dataset folder
    one_line_error({**cfg, "csv_files": {"train": "train.csv"}}, r"csv_files has no test table")
    one_line_error({**cfg, "csv_files": {"train": "train.csv", "test": "nope.csv"}},
                   r"test table .*nope\.csv not found \(dataset\.csv_files\.test", FileNotFoundError)
    one_line_error({**cfg, "csv_files": {"train": "train.csv", "tset": "x.csv"}}, r"unknown split\(s\) \['tset'\]")
    one_line_error({**cfg, "csv": "train.csv"}, r"set either dataset\.csv=.* not both")


def test_excel_habits_bom_whitespace_blank_rows_crlf_backslashes_and_tsv(tmp_path: Path) -> None:
    text = "\ufeff path ,\tlabel , split\r\n\r\n sub\\a.png , Benign ,TRAIN\r\n,,\r\n./b.png,malignant,train,\r\n" \
           "c.png,benign,test\r\nd.png,MALIGNANT,test\r\n"
    cfg = dataset(tmp_path, text, images=("sub/a.png", "b.png", "c.png", "d.png"), classnames=CLASSES)
    splits = read_dataset(cfg)
    assert splits.train == [Record("sub/a.png", 0), Record("b.png", 1)]  # names match ignoring case
    assert splits.test == [Record("c.png", 0), Record("d.png", 1)]
    tsv = dataset(tmp_path, TABLE.replace(",", "\t"), "labels.tsv")
    assert read_dataset(tsv).split_hash == read_dataset(dataset(tmp_path)).split_hash


def test_integer_labels_need_classnames_and_must_be_in_range(tmp_path: Path) -> None:
    text = "path,label,split\na.png,0,train\nb.png,1.0,train\nc.png,1,test\nd.png,0,test\n"
    assert read_dataset(dataset(tmp_path, text, classnames=CLASSES)).train == [Record("a.png", 0),
                                                                               Record("b.png", 1)]
    one_line_error(dataset(tmp_path, text), r"labels\.csv line 2 column 'label': integer labels .* need "
                                            r"dataset\.classnames")
    bad = text.replace("c.png,1,", "c.png,2,")
    one_line_error(dataset(tmp_path, bad, classnames=CLASSES), r"labels\.csv line 4 column 'label': label 2 is "
                                                                r"outside 0\.\.1")
    one_line_error(dataset(tmp_path, text.replace("1.0", "1.5"), classnames=CLASSES),
                   r"line 3 column 'label': label '1\.5' is not an integer index")
    one_line_error(dataset(tmp_path, text, classnames=CLASSES, label_kind="name"), r"label '0' is not one of")
    one_line_error(dataset(tmp_path, text, label_kind="guess"), r"dataset\.label_kind='guess' is not one of")


def test_class_name_mistakes(tmp_path: Path) -> None:
    msg = one_line_error(dataset(tmp_path, TABLE.replace("b.png,malignant", "b.png,malignent"), classnames=CLASSES),
                         r"labels\.csv line 3 column 'label': label 'malignent' is not one of dataset\.classnames")
    assert "did you mean malignant?" in msg
    one_line_error(dataset(tmp_path, TABLE.replace("c.png,benign", "c.png,Benign")),
                   r"names one class twice: label 0 'Benign' and label 1 'benign'")
    one_line_error(dataset(tmp_path, classnames=["benign", "Benign"]), r"dataset\.classnames names one class twice")
    one_line_error(dataset(tmp_path, TABLE.replace("b.png,malignant", "b.png,")), r"line 3 column 'label': empty label")


def test_column_and_split_mistakes(tmp_path: Path) -> None:
    msg = one_line_error(dataset(tmp_path, TABLE.replace("path,", "Path,")),
                         r"labels\.csv has no column 'path'; did you mean Path\? \(columns: Path, label, split\); "
                         r"set dataset\.path_column")
    assert str(tmp_path / "ds" / "labels.csv") in msg
    one_line_error(dataset(tmp_path, TABLE.replace("label,", "path,")), r"has 2 columns named 'path'")
    one_line_error(dataset(tmp_path, TABLE, split_column="fold"), r"no column 'fold'.*set dataset\.split_column")
    one_line_error(dataset(tmp_path, TABLE.replace("e.png,benign,test", "e.png,benign,holdout")),
                   r"line 6 column 'split': split value 'holdout' is not one of train, val, valid, test; "
                   r"set dataset\.split_values")
    one_line_error(dataset(tmp_path, TABLE.replace("a.png,benign,train", "a.png,benign,")), r"empty split value")
    one_line_error(dataset(tmp_path, TABLE, split_values={"train": "train", "test": "train"}),
                   r"split_values gives 'train' to both train and test")
    one_line_error(dataset(tmp_path, TABLE, split_values={"training": "train"}), r"split_values must map")
    one_line_error(dataset(tmp_path, TABLE.replace("a.png,benign,train", "a.png,benign,test")
                           .replace("b.png,malignant,train", "b.png,malignant,test")), r"no train rows in")
    one_line_error(dataset(tmp_path, TABLE.replace("d.png,malignant", "d,1.png,malignant")),
                   r"labels\.csv line 5 has 4 values but the header has 3 \(a value with an unquoted ','\? quote it\)")
    one_line_error(dataset(tmp_path, ""), r"labels\.csv is empty")
    one_line_error({**dataset(tmp_path), "csv": None}, r"set either dataset\.csv=.* not neither")
    one_line_error({**dataset(tmp_path), "csv": "nope.csv"}, r"table .*nope\.csv not found \(dataset\.csv",
                   FileNotFoundError)
    (tmp_path / "ds" / "latin1.csv").write_bytes("path,label,split\nä.png,benign,train\n".encode("latin-1"))
    one_line_error({**dataset(tmp_path), "csv": "latin1.csv"}, r"latin1\.csv is not UTF-8 text .*save it as UTF-8")


def test_paths_outside_the_image_folder_are_refused_absolute_inside_ones_kept(tmp_path: Path) -> None:
    for bad in ("../outside.png", "x/../../outside.png", "/etc/passwd", "C:\\data\\a.png", "\\\\server\\a.png"):
        one_line_error(dataset(tmp_path, TABLE.replace("a.png,", f"{bad},"), images=("b.png", "c.png", "d.png")),
                       r"labels\.csv line 2 column 'path': .* is outside the image folder")
    inside = TABLE.replace("a.png,", f"{tmp_path / 'ds' / 'a.png'},")
    images = ("a.png", "b.png", "c.png", "d.png", "e.png")
    assert read_dataset(dataset(tmp_path, inside, images=images)).train[0] == Record("a.png", 0)
    one_line_error(dataset(tmp_path, TABLE.replace("a.png,", " ,")), r"line 2 column 'path': empty path")


def test_a_missing_image_names_the_table_line(tmp_path: Path) -> None:
    cfg = dataset(tmp_path)
    (tmp_path / "ds" / "a.png").unlink()  # the first train image: caught when reading (a wrong image_root)
    one_line_error(cfg, r"image .*a\.png not found \(.*labels\.csv line 2 column 'path'\); paths are relative "
                        r"to .*: fix dataset\.image_root", FileNotFoundError)
    write_tiny_image(tmp_path / "ds" / "a.png")
    (tmp_path / "ds" / "e.png").unlink()  # a later one: the pre-flight names its line
    report = preflight(read_dataset(cfg))
    assert report.errors == [f"ds: image missing: {tmp_path / 'ds' / 'labels.csv'} line 6 (test[1], e.png)"]


def test_the_documented_example_reads(tmp_path: Path) -> None:
    docs = (Path(__file__).resolve().parents[1] / "docs" / "datasets.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n# my_conf/dataset/isic_demo\.yaml\n(.*?)```", docs, re.S)
    assert block, "docs/datasets.md lost its CSV example"
    cfg = OmegaConf.create(block.group(1))
    cfg.root = str(tmp_path)
    rows = ["image,diagnosis,split"]
    for i, (cls, split) in enumerate(zip(list(cfg.classnames) * 3, ["train"] * 3 + ["valid"] * 3 + ["test"] * 3)):
        write_tiny_image(tmp_path / "isic" / "images" / f"{i}.png", 20 * i)
        rows.append(f"{i}.png,{cls},{split}")
    (tmp_path / "isic" / "labels.csv").write_text("\n".join(rows) + "\n")
    splits = read_dataset(cfg)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3, 3, 3)
    assert splits.classnames == list(cfg.classnames) and preflight(splits).errors == []


DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"


@pytest.mark.skipif(not (DEMO / "BTMRI" / "split_BTMRI.json").is_file(), reason="no vendored BTMRI demo images")
def test_real_images_listed_in_a_csv_read_as_the_biomedcoop_split_does(tmp_path: Path) -> None:
    """The vendored BTMRI MRI subset exported as one table (path, class name, split): the same records, labels, class
    order and split hash as its BiomedCoOp split file, and its images decode."""
    from promptbench.config import compose
    from promptbench.data.records import open_image

    reference = read_dataset(compose(["dataset=demo_btmri"]).dataset)
    rows = ["image,diagnosis,part"] + [f"{r.key},{reference.classnames[r.label]},{split}"
                                       for split in ("train", "val", "test") for r in getattr(reference, split)]
    table = tmp_path / "btmri.csv"
    table.write_text("\n".join(rows) + "\n", encoding="utf-8")
    image_root = Path(reference.image_root).relative_to(DEMO / "BTMRI")
    got = read_dataset({"format": "csv", "root": str(DEMO), "folder": "BTMRI", "csv": str(table),
                        "image_root": str(image_root), "path_column": "image", "label_column": "diagnosis",
                        "split_column": "part", "classnames": list(reference.classnames)})
    for split in ("train", "val", "test"):
        assert [(r.key, r.label) for r in getattr(got, split)] == [(r.key, r.label) for r in getattr(reference, split)]
    assert got.classnames == reference.classnames and got.split_hash == reference.split_hash
    assert len(got.test) == 200 and open_image(Path(got.image_root) / got.test[0].key).size[0] > 0

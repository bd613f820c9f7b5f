"""Dataset spec, condition sets, the iclevr/synthetic dataset plugins and the renderer (CPU, small)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from bench.conditions import (
    ConditionError,
    labels_from_objects_json,
    load_condition_set,
    load_labels_spec,
    multi_hot,
)
from bench.plugins import get_plugins
from bench_builtins.datasets.folder import DatasetError
from bench_builtins.datasets.synthetic.export import (
    contact_sheet,
    make_conditions,
    write_condition_set,
    write_objects_json,
    write_synthetic_folder,
)
from bench_builtins.datasets.synthetic.render import render_scenes
from bench_builtins.datasets.synthetic.scene import (
    COLOURS,
    COLOURS_SRGB,
    MIN_PIXELS,
    MIN_VISIBLE,
    SIZES,
    SceneError,
    _project,
    _visibility,
    sample_scenes,
    scenes_for_conditions,
)

LABELS = load_labels_spec()
SHIPPED = Path(__file__).resolve().parent.parent / "plugins" / "bench_builtins" / "conditions"


def dataset(name: str, **options):
    return get_plugins().registry("datasets").get(name).factory(**options)


# --- the spec and condition sets ------------------------------------------------------------


def test_spec_labels_index_order():
    assert len(LABELS) == 24
    assert LABELS[0] == "gray cube" and LABELS[8] == "gray sphere" and LABELS[9] == "red sphere"
    assert LABELS[6] == "cyan cube" and LABELS[22] == "cyan cylinder" and LABELS[23] == "yellow cylinder"


def test_multi_hot():
    hot = multi_hot([["red sphere", "cyan cylinder"], ["gray cube"]], LABELS)
    assert hot.shape == (2, 24) and hot.dtype == torch.float32
    assert hot[0].nonzero().flatten().tolist() == [9, 22]
    assert hot[1].nonzero().flatten().tolist() == [0]


def write(tmp_path: Path, text: str, name: str = "conds.json") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[["red sphere"], ["red sphre"]]',
            r"condition 1, item 0: unknown label 'red sphre'.*Did you mean: 'red sphere'",
        ),
        ('[["red sphere", "cyan cube", "red sphere"]]', r"condition 0, item 2: 'red sphere' appears twice"),
        ('[["red sphere"], []]', r"condition 1 is empty"),
        ('[["red sphere"],\n ["cyan cube",]]', r"malformed JSON at line 2, column"),
        ('{"a": ["red sphere"]}', r"expected a JSON list of conditions"),
        ('["red sphere"]', r"condition 0 is a str"),
        ('[["red sphere", 3]]', r"condition 0, item 1 is a int"),
        ("[]", r"condition list is empty"),
    ],
)
def test_condition_errors(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConditionError, match=expected) as info:
        load_condition_set(path, LABELS)
    assert str(path) in str(info.value)


def test_condition_file_that_is_not_text(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"PK\x03\x04\xff\xfe binary")
    with pytest.raises(ConditionError, match=r"model.pt: not a JSON text file \(byte 4 is not UTF-8\)"):
        load_condition_set(path, LABELS)


def test_condition_missing_file(tmp_path):
    with pytest.raises(ConditionError, match=r"not found"):
        load_condition_set(tmp_path / "nope.json", LABELS)


def test_condition_set_name_and_content(tmp_path):
    s = load_condition_set(write(tmp_path, '[["red sphere", "cyan cube"]]', "mine.json"), LABELS)
    assert s.name == "mine" and s.conditions == [["red sphere", "cyan cube"]]
    assert load_condition_set(s.source, LABELS, name="other").name == "other"


def test_shipped_condition_sets():
    test = load_condition_set(SHIPPED / "test.json", LABELS)
    new = load_condition_set(SHIPPED / "new_test.json", LABELS)
    assert len(test) == 32 and len(new) == 32
    assert {len(c) for c in test.conditions} == {1, 2, 3}
    for c in new.conditions:
        assert 2 <= len(c) <= 3 and shares_attribute(c)
    # the shipped files are exactly what the recorded calls make
    assert test.conditions == make_conditions(32, (1, 3), seed=0, shared=False)
    assert new.conditions == make_conditions(32, (2, 3), seed=1, shared=True)


def shares_attribute(condition: list[str]) -> bool:
    colours = [c.split()[0] for c in condition]
    shapes = [c.split()[1] for c in condition]
    return len(set(colours)) < len(colours) or len(set(shapes)) < len(shapes)


def test_write_condition_set(tmp_path):
    path = write_condition_set(tmp_path / "c.json", n=10, objects=(2, 3), seed=5, shared=True)
    s = load_condition_set(path, LABELS)
    assert len(s) == 10 and all(shares_attribute(c) for c in s.conditions)


def test_a_key_given_twice_in_train_json_is_refused(tmp_path):
    """json keeps the last of two equal keys: one image's labels were replaced without a word."""
    root = hand_made_folder(tmp_path / "data", subdir=True)
    text = (root / "train.json").read_text()
    (root / "train.json").write_text(text[:-1] + ', "CLEVR_train_000001_0.png": ["red cube"]}')
    with pytest.raises(DatasetError, match=r"train.json: the key 'CLEVR_train_000001_0.png' appears twice"):
        dataset("iclevr", data_root=root, use_cache=False)


def test_objects_json_checked(tmp_path):
    good = write_objects_json(tmp_path / "objects.json")
    assert labels_from_objects_json(good, LABELS) == LABELS
    swapped = {name: i for i, name in enumerate(LABELS)}
    swapped["gray cube"], swapped["red cube"] = 1, 0
    bad = write(tmp_path, json.dumps(swapped), "swapped.json")
    with pytest.raises(ConditionError, match=r"orders the labels differently"):
        labels_from_objects_json(bad, LABELS)
    renamed = {("grey cube" if n == "gray cube" else n): i for i, n in enumerate(LABELS)}
    with pytest.raises(ConditionError, match=r"'grey cube'"):
        labels_from_objects_json(write(tmp_path, json.dumps(renamed), "renamed.json"), LABELS)


# --- the iclevr folder loader ----------------------------------------------------------------

SOLID = {
    "CLEVR_train_000000_0.png": (["red sphere"], (200, 10, 10)),
    "CLEVR_train_000000_1.png": (["red sphere", "cyan cube"], (10, 200, 200)),
    "CLEVR_train_000001_0.png": (["gray cylinder"], (128, 128, 128)),
}


def hand_made_folder(root: Path, subdir: bool, size=(320, 240)) -> Path:
    images = root / "images" if subdir else root
    images.mkdir(parents=True, exist_ok=True)
    for name, (_, rgb) in SOLID.items():
        Image.new("RGB", size, rgb).save(images / name)
    (root / "train.json").write_text(json.dumps({k: v[0] for k, v in SOLID.items()}))
    write_objects_json(root / "objects.json")
    return root


@pytest.mark.parametrize("subdir", [True, False])
def test_loader_on_hand_made_folder(tmp_path, subdir):
    root = hand_made_folder(tmp_path / "data", subdir)
    ds = dataset("iclevr", data_root=str(root), cache_dir=tmp_path / "cache")
    assert len(ds) == 3 and ds.labels == LABELS and ds.image_size == 64
    assert ds.conditions == [v[0] for v in SOLID.values()]
    image, cond = ds[1]
    assert image.shape == (3, 64, 64) and cond.shape == (24,)
    expected = torch.tensor([10, 200, 200]) / 127.5 - 1
    assert torch.allclose(image.mean(dim=(1, 2)), expected, atol=1e-3)
    assert cond.nonzero().flatten().tolist() == [6, 9]
    assert ds.images_uint8().shape == (3, 3, 64, 64) and ds.images_uint8().dtype == torch.uint8
    # second load comes from the cache and is identical
    again = dataset("iclevr", data_root=str(root), cache_dir=tmp_path / "cache")
    assert torch.equal(again.images_uint8(), ds.images_uint8())
    assert list((tmp_path / "cache" / "iclevr").glob("*.pt"))


def test_loader_takes_images_already_squashed_to_squares(tmp_path):
    squashed = dataset("iclevr", data_root=hand_made_folder(tmp_path / "sq", True, (64, 64)), use_cache=False)
    source = dataset("iclevr", data_root=hand_made_folder(tmp_path / "src", True), use_cache=False)
    assert torch.equal(squashed.images_uint8(), source.images_uint8())


def test_loader_explicit_paths(tmp_path):
    root = hand_made_folder(tmp_path / "data", subdir=True)
    ds = dataset("iclevr", train_json=root / "train.json", images_dir=root / "images", use_cache=False)
    assert len(ds) == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"3 of the 3 images .* check --images-dir: it names the folder"):
        dataset("iclevr", data_root=root, images_dir=tmp_path / "empty", use_cache=False)


def test_json_files_saved_with_a_byte_order_mark_read_as_any_other(tmp_path):
    path = tmp_path / "test.json"
    path.write_bytes(b"\xef\xbb\xbf" + b'[["red sphere"]]')  # as some Windows editors save UTF-8
    assert load_condition_set(path, LABELS).conditions == [["red sphere"]]


def test_loader_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"needs --data-root FOLDER"):
        dataset("iclevr")
    with pytest.raises(DatasetError, match=r"not found.*train.json, objects.json"):
        dataset("iclevr", data_root=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"train.json not found"):
        dataset("iclevr", data_root=tmp_path / "empty")
    root = hand_made_folder(tmp_path / "a", subdir=True)
    (root / "images" / "CLEVR_train_000001_0.png").unlink()
    with pytest.raises(
        DatasetError, match=r"1 of the 3 images train.json names are not in .*: 'CLEVR_train_000001_0.png'"
    ):
        dataset("iclevr", data_root=root, use_cache=False)
    root = hand_made_folder(tmp_path / "b", subdir=False, size=(100, 60))
    with pytest.raises(DatasetError, match=r"is 100x60; i-CLEVR images are 320x240"):
        dataset("iclevr", data_root=root, use_cache=False)
    root = hand_made_folder(tmp_path / "b2", subdir=False, size=(48, 48))  # square, but too small
    with pytest.raises(DatasetError, match=r"is 48x48; .*or squares of at least 64"):
        dataset("iclevr", data_root=root, use_cache=False)
    root = hand_made_folder(tmp_path / "t", subdir=True)
    png = root / "images" / "CLEVR_train_000001_0.png"
    png.write_bytes(png.read_bytes()[:60])  # truncated: one bad file among thousands must be named
    with pytest.raises(DatasetError, match=r"CLEVR_train_000001_0.png cannot be read as an image"):
        dataset("iclevr", data_root=root, use_cache=False)
    root = hand_made_folder(tmp_path / "c", subdir=True)
    data = json.loads((root / "train.json").read_text())
    data["CLEVR_train_000001_0.png"] = ["gray cylindre"]
    (root / "train.json").write_text(json.dumps(data))
    with pytest.raises(
        DatasetError, match=r"entry 'CLEVR_train_000001_0.png', item 0: unknown label 'gray cylindre'"
    ):
        dataset("iclevr", data_root=root, use_cache=False)


def test_the_image_folder_is_the_one_that_holds_the_images(tmp_path):
    """Course files keep the PNGs in a folder of their own; an empty images/ does not hide PNGs
    beside train.json; every missing file is counted before any image is decoded."""
    root = hand_made_folder(tmp_path / "course", subdir=True)
    (root / "images").rename(root / "iclevr")
    ds = dataset("iclevr", data_root=root, use_cache=False)
    assert len(ds) == 3 and ds.info["images_dir"] == str(root / "iclevr")
    flat = hand_made_folder(tmp_path / "flat", subdir=False)
    (flat / "images").mkdir()
    assert dataset("iclevr", data_root=flat, use_cache=False).info["images_dir"] == str(flat)
    for png in (root / "iclevr").glob("*.png"):
        png.unlink()
    with pytest.raises(DatasetError, match=r"3 of the 3 images .* \(nor in any folder beside it in"):
        dataset("iclevr", data_root=root, use_cache=False)


@pytest.mark.parametrize(("mode", "what"), [("L", "grayscale"), ("I;16", "16-bit"), ("1", "1-bit")])
def test_images_without_8_bit_colour_are_refused(tmp_path, mode, what):
    """A 16-bit PNG read as all white, a grey one trained against colour labels: other data."""
    root = hand_made_folder(tmp_path / "data", subdir=True)
    Image.new(mode, (320, 240)).save(root / "images" / "CLEVR_train_000001_0.png")
    with pytest.raises(DatasetError, match=rf"CLEVR_train_000001_0.png is a {what} image \(mode {mode}\)"):
        dataset("iclevr", data_root=root, use_cache=False)
    Image.new("RGBA", (320, 240), (10, 20, 30, 255)).save(root / "images" / "CLEVR_train_000001_0.png")
    assert len(dataset("iclevr", data_root=root, use_cache=False)) == 3  # RGBA, as renders are saved


def test_synthetic_folder_round_trip(tmp_path):
    root = write_synthetic_folder(tmp_path / "syn", scenes=2, seed=3)
    train = json.loads((root / "train.json").read_text())
    assert list(train) == [f"CLEVR_train_{s:06d}_{k}.png" for s in range(2) for k in range(3)]
    assert [len(v) for v in train.values()] == [1, 2, 3, 1, 2, 3]
    with Image.open(root / "images" / "CLEVR_train_000000_0.png") as im:
        assert im.size == (320, 240) and im.mode == "RGB"
    ds = dataset("iclevr", data_root=str(root), cache_dir=tmp_path / "cache")
    assert ds.conditions == list(train.values()) and len(ds) == 6
    # the same scenes through the synthetic plugin give the same 64x64 images (PNG is lossless)
    syn = dataset("synthetic", scenes=2, seed=3, cache_dir=tmp_path / "cache")
    assert syn.conditions == ds.conditions
    assert torch.equal(syn.images_uint8(), ds.images_uint8())
    image, cond = syn[0]
    assert image.min() >= -1 and image.max() <= 1 and cond.sum() == 1
    sheet = contact_sheet(root, tmp_path / "sheet.png", n=6)
    assert sheet.stat().st_size > 1000
    # written in the format its name says (a .jpg name held a PNG); a name that is no image refused
    with Image.open(contact_sheet(root, tmp_path / "sheet.jpg", n=2)) as im:
        assert im.format == "JPEG"
    from bench.plotting import PlotError

    with pytest.raises(PlotError, match="not an image file name"):
        contact_sheet(root, tmp_path / "sheet.txt", n=2)


# --- scenes and the renderer -----------------------------------------------------------------


def test_scene_sampling_rules():
    frames = sample_scenes(6, seed=0, max_objects=5)
    assert len(frames) == 30 and [len(f["objects"]) for f in frames[:5]] == [1, 2, 3, 4, 5]
    for f in frames:
        names = [f"{o['colour']} {o['shape']}" for o in f["objects"]]
        assert len(set(names)) == len(names)
        for i, a in enumerate(f["objects"]):
            for b in f["objects"][i + 1 :]:
                assert ((a["x"] - b["x"]) ** 2 + (a["y"] - b["y"]) ** 2) ** 0.5 > 0.25
    # each frame keeps the objects of the frame before
    assert frames[4]["objects"][:4] == frames[3]["objects"]
    assert sample_scenes(2, seed=0) == sample_scenes(2, seed=0)
    assert sample_scenes(2, seed=0, split="heldout") != sample_scenes(2, seed=0)
    assert sample_scenes(3, seed=0)[3:6] == sample_scenes(1, seed=0, start=1)  # scene i independent of n


def test_scenes_for_conditions_hold_exactly_each_conditions_objects():
    conditions = [["red cube"], ["gray cylinder", "green cube", "green sphere"]]
    frames = scenes_for_conditions(conditions, per_condition=3, seed=0)
    assert [f["scene"] for f in frames] == [0, 0, 0, 1, 1, 1]
    for f in frames:
        assert [f"{o['colour']} {o['shape']}" for o in f["objects"]] == conditions[f["scene"]]
        fractions, pixels = _visibility(f["camera"], f["objects"])  # the training set's rules hold
        assert (fractions >= MIN_VISIBLE).all() and (pixels >= MIN_PIXELS).all()
    assert len({json.dumps(f["objects"]) for f in frames}) == 6  # each render its own layout
    assert scenes_for_conditions(conditions, 3, seed=0) == frames
    assert scenes_for_conditions(conditions, 3, seed=1) != frames
    with pytest.raises(SceneError, match="no objects"):
        scenes_for_conditions([["red torus"]], 1)
    crowd = [f"{c} {s}" for s in ("cube", "sphere") for c in COLOURS][:12]
    with pytest.raises(SceneError, match=r"condition 0 \(12 objects\): could not place 12 objects"):
        scenes_for_conditions([crowd], 1)


def test_every_object_is_visible_enough_to_be_told_apart():
    # 5-object scenes are the most crowded; small objects far back are the smallest on screen.
    frames = [f for f in sample_scenes(40, seed=3, max_objects=5, split="heldout") if f["frame"] == 4]
    pixels = []
    for f in frames:
        fractions, px = _visibility(f["camera"], f["objects"])
        assert (fractions >= MIN_VISIBLE).all() and (px >= MIN_PIXELS).all()
        pixels += px.tolist()
    assert min(pixels) < 2 * MIN_PIXELS  # the rule binds: small far objects still occur
    assert any(o["size"] == "small" for f in frames for o in f["objects"])


def test_render_deterministic():
    frames = sample_scenes(2, seed=7)
    a = render_scenes(frames, width=96, height=72)
    b = render_scenes(frames, width=96, height=72, batch_size=2)
    assert a.shape == (6, 72, 96, 3) and a.dtype == torch.uint8
    assert a.numpy().tobytes() == b.numpy().tobytes()


def one_object(shape: str, colour: str, material: str = "rubber") -> dict:
    obj = {
        "shape": shape,
        "colour": colour,
        "material": material,
        "size": "large",
        "x": 0.0,
        "y": 0.0,
        "rotation": 20.0,
    }
    camera = {"elevation": 30.0, "azimuth": -45.0, "distance": 10.5, "fov": 49.1}
    return {"scene": 0, "frame": 0, "camera": camera, "lights": {}, "objects": [obj]}


def test_object_colour_matches_label():
    w, h = 160, 120
    scenes = [one_object("sphere", c) for c in COLOURS]
    images = render_scenes(scenes, width=w, height=h).float()
    sx, sy, _, _ = _project(scenes[0]["camera"], torch.tensor([[0.0, 0.0, SIZES["large"]]]).numpy())
    px, py = round((sx[0] + 1) / 2 * w), round((1 - sy[0]) / 2 * h)
    palette = torch.tensor([COLOURS_SRGB[c] for c in COLOURS], dtype=torch.float32)
    for colour, img in zip(COLOURS, images, strict=True):
        patch = img[py - 3 : py + 4, px - 3 : px + 4].reshape(-1, 3).mean(0)
        nearest = COLOURS[int(((palette - patch) ** 2).sum(1).argmin())]
        assert nearest == colour, f"{colour} sphere rendered as {patch.tolist()}"


def silhouette(img: torch.Tensor) -> torch.Tensor:
    """Pixels of a saturated (red) object: the floor and its shadow are gray."""
    img = img.float()
    return (img[..., 0] - img[..., 1:].max(-1).values) > 40


def test_shapes_have_their_silhouettes():
    images = render_scenes(
        [one_object(s, "red") for s in ("sphere", "cube", "cylinder")], width=160, height=120
    )
    masks = [silhouette(img) for img in images]
    ious = []
    for mask in masks:
        ys, xs = mask.nonzero(as_tuple=True)
        cy, cx = ys.float().mean(), xs.float().mean()
        r = (mask.sum() / torch.pi).sqrt()
        yy, xx = torch.meshgrid(torch.arange(120), torch.arange(160), indexing="ij")
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        ious.append(float((disc & mask).sum() / (disc | mask).sum()))
    sphere, cube, cylinder = ious
    assert sphere > 0.9, ious  # a sphere looks like a disc from any side
    assert cube < sphere - 0.04 and cylinder < sphere - 0.04, ious


def test_data_conditions_says_how_many_are_distinct(tmp_path):
    from click.testing import CliRunner

    from bench.cli import main

    out = tmp_path / "one.json"
    result = CliRunner().invoke(
        main, ["data", "conditions", "--out", str(out), "--n", "40", "--objects", "1"]
    )
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    distinct = len({tuple(c) for c in written})
    assert len(written) == 40 and distinct <= 24  # 24 labels: no more one-object conditions
    assert f"40 conditions, {distinct} of them distinct" in result.output
    result = CliRunner().invoke(main, ["data", "conditions", "--out", str(out), "--n", "8", "--force"])
    assert result.output.strip().endswith("8 conditions")


def test_data_synth_writes_only_into_an_empty_folder(tmp_path):
    from click.testing import CliRunner

    from bench.cli import main

    out = tmp_path / "synth"
    assert CliRunner().invoke(main, ["data", "synth", "--out", str(out), "--scenes", "1"]).exit_code == 0
    before = sorted(p.name for p in (out / "images").iterdir())
    result = CliRunner().invoke(main, ["data", "synth", "--out", str(out), "--scenes", "2"])
    assert result.exit_code == 2 and "is not empty; give a new or empty folder" in result.output
    assert sorted(p.name for p in (out / "images").iterdir()) == before


@pytest.mark.parametrize("existed", [False, True])
def test_an_interrupted_data_synth_leaves_the_folder_as_it_was(tmp_path, monkeypatch, existed):
    """Ctrl-C left PNGs without train.json: a folder `bench data show` could not read and the
    retry refused as not empty."""
    from PIL import Image

    from bench_builtins.datasets.synthetic.export import write_synthetic_folder

    out = tmp_path / "synth"
    if existed:
        out.mkdir()
    saves = []

    def save_twice_then_ctrl_c(self, path, *args, **kwargs):
        if len(saves) == 2:
            raise KeyboardInterrupt
        saves.append(path)
        Path(path).write_bytes(b"png")

    monkeypatch.setattr(Image.Image, "save", save_twice_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_folder(out, scenes=2)
    assert len(saves) == 2 and not any(Path(p).exists() for p in saves)
    assert (out.is_dir() and not any(out.iterdir())) if existed else not out.exists()

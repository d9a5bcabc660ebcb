import hashlib
import io
import json

import numpy as np
from PIL import Image

from dualtoken.data.mnist import generate_digit
from dualtoken.data.synthetic import COLOURS, NUMBER_WORDS, POSITIONS, SHAPES, SIZES, generate_example


def test_same_seed_gives_identical_bytes_and_other_seed_differs():
    a = [generate_example(0, i) for i in range(20)]
    b = [generate_example(0, i) for i in range(20)]
    c = [generate_example(1, i) for i in range(20)]
    assert [x.png for x in a] == [x.png for x in b]
    assert [x.captions for x in a] == [x.captions for x in b]
    assert sum(x.png != y.png for x, y in zip(a, c, strict=True)) >= 18


def test_example_is_independent_of_generation_order():
    forward = generate_example(3, 17)
    generate_example(3, 5)
    assert generate_example(3, 17).png == forward.png


def test_image_size_and_vocabulary():
    seen_shapes, seen_colours, counts = set(), set(), set()
    for i in range(300):
        ex = generate_example(0, i, size=48)
        assert Image.open(io.BytesIO(ex.png)).size == (48, 48)
        objs = ex.attributes["objects"]
        assert 1 <= len(objs) <= 3 and ex.attributes["count"] == len(objs)
        assert len({(o["row"], o["col"]) for o in objs}) == len(objs)  # one object per cell
        for o in objs:
            assert o["shape"] in SHAPES and o["colour"] in COLOURS and o["position"] in POSITIONS
            seen_shapes.add(o["shape"])
            seen_colours.add(o["colour"])
        counts.add(len(objs))
    assert seen_shapes == set(SHAPES) and seen_colours == set(COLOURS) and counts == {1, 2, 3}


def test_captions_and_answers_agree_with_attributes():
    for i in range(200):
        ex = generate_example(0, i)
        objs = ex.attributes["objects"]
        assert len(ex.captions) >= 3 and len(set(ex.captions)) == len(ex.captions)
        for o in objs:  # every object's colour and shape is named in the first caption
            assert o["colour"] in ex.captions[0] and o["shape"] in ex.captions[0]
        pairs = {(o["colour"], o["shape"]) for o in objs}
        types = {q["type"] for q in ex.qa}
        assert {"count", "exists"} <= types
        for q in ex.qa:
            if q["type"] == "count":
                assert q["answer"] == NUMBER_WORDS[len(objs)]
            elif q["type"] == "exists":
                colour, shape = q["question"].removeprefix("is there ").rstrip("?").split()[-2:]
                assert q["answer"] == ("yes" if (colour, shape) in pairs else "no")
            elif q["type"] == "shape":
                colour = q["question"].split()[-2]
                assert [o["shape"] for o in objs if o["colour"] == colour] == [q["answer"]]
            elif q["type"] == "colour":
                shape = q["question"].rstrip("?").split()[-1]
                assert [o["colour"] for o in objs if o["shape"] == shape] == [q["answer"]]
            elif q["type"] == "position":
                colour, shape = q["question"].rstrip("?").split()[-2:]
                assert [o["position"] for o in objs if (o["colour"], o["shape"]) == (colour, shape)] == [q["answer"]]
        json.dumps(ex.attributes)


def test_object_colour_is_actually_drawn():
    """A single large object's colour dominates its cell: the image shows what the caption says."""
    checked = 0
    for i in range(200):
        ex = generate_example(0, i, size=96)
        objs = ex.attributes["objects"]
        if len(objs) != 1 or objs[0]["size"] != "large":
            continue
        o = objs[0]
        img = np.asarray(Image.open(io.BytesIO(ex.png)), dtype=np.float32)
        cy, cx = (o["row"] + 0.5) * 32, (o["col"] + 0.5) * 32
        patch = img[int(cy) - 2 : int(cy) + 3, int(cx) - 2 : int(cx) + 3].reshape(-1, 3).mean(0)
        assert np.abs(patch - np.array(COLOURS[o["colour"]])).max() < 40, (i, o, patch)
        checked += 1
    assert checked >= 5


def test_mnist_digits_load_offline_and_match_labels():
    ex = generate_digit(0, 0)
    again = generate_digit(0, 0)
    assert ex.png == again.png
    assert Image.open(io.BytesIO(ex.png)).size == (64, 64)
    word = ex.attributes["digit"]
    assert NUMBER_WORDS[word] in ex.captions[0]
    assert ex.qa[0] == {"type": "digit", "question": "which digit is shown?", "answer": NUMBER_WORDS[word]}
    assert ex.attributes["colour"] in ex.captions[1]
    digits = {generate_digit(0, i).attributes["digit"] for i in range(60)}
    assert digits == set(range(10))


def test_default_scenes_are_unchanged_by_the_scene_options():
    """The harder mix (up to 3 objects, textured backgrounds, scale 1) stays the images it always was."""
    pixels = b"".join(np.asarray(Image.open(io.BytesIO(generate_example(0, i).png))).tobytes() for i in range(40))
    assert hashlib.sha256(pixels).hexdigest() == "c3fa96169c5b4e1f57e3ad889f0417d39a5eddca8dbc7a704deab728ade8c4ac"


def test_one_large_object_per_image_stays_inside_and_is_drawn():
    """max_objects=1, object_scale=2: one object per image, scaled up and kept whole inside the canvas (a circle
    at the border covers its full area, not the part a centred-in-its-cell circle would leave)."""
    circles = 0
    for i in range(120):
        ex = generate_example(0, i, size=32, textured_fraction=0.0, max_objects=1, object_scale=2.0)
        assert ex.attributes["count"] == 1 and ex.attributes["background"] == "plain"
        obj = ex.attributes["objects"][0]
        if obj["shape"] != "circle":
            continue
        img = np.asarray(Image.open(io.BytesIO(ex.png)), dtype=np.float32)
        drawn = (np.abs(img - np.array(COLOURS[obj["colour"]])).max(-1) < 60).sum()
        radius = SIZES[obj["size"]] * (32 / 3) * 2.0
        assert abs(drawn - np.pi * radius**2) < 0.25 * np.pi * radius**2, (i, obj, drawn)
        circles += 1
    assert circles >= 8

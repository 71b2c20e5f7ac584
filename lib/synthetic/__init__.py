"""A deterministic synthetic dataset in the exact Kaggle iMaterialist (Fashion) 2019 layout (offline default).

Layout written by :func:`generate_dataset` into ``out_dir``::

    train.csv                ImageId,EncodedPixels,Height,Width,ClassId (one row per instance, sorted by ImageId)
    label_descriptions.json  the competition's label file (byte-identical to the Kaggle file)
    train/<32 hex>.jpg       training images
    test/<32 hex>.jpg        test images
    sample_submission.csv    ImageId,EncodedPixels,ClassId: one placeholder row "1 1", "0" per test image
    test_ground_truth.csv    train.csv format for the test images (offline scoring)
    synthetic.json           marker: generator version, parameters, counts, sizes, category counts
    instances_train.json     (``coco=True``) the same annotations in COCO format, as Fashionpedia ships them
    instances_test.json      (``coco=True``) the test images' ground truth in COCO format

Images show 1-3 front-facing, person-like figures (head, torso, arms, legs, skin tones, hair) dressed in
garments drawn as category-typical polygons/ellipses with textures (plain, stripe, check, dot, floral,
zebra, letters) on cluttered backgrounds. Masks follow the competition's conventions:

* garment parts (hood 27, collar 28, lapel 29, epaulette 30, sleeve 31, pocket 32, neckline 33, buckle 34,
  zipper 35) and decorations (36-45) are separate instances whose masks OVERLAP their garment's mask
  (the garment mask includes the area under its parts);
* masks are the VISIBLE areas: whatever is drawn later (an outer layer, a hand, a figure further in
  front) is subtracted from earlier masks; instances with fewer than :data:`MIN_VISIBLE_PX` visible
  pixels are dropped;
* ClassId carries attribute ids only for categories 0-12, 27, 28, 33 (``lib.labels.ATTRIBUTE_CATEGORIES``),
  chosen BY NAME from ``lib.label_descriptions`` to match the drawing: length (hem height), opening type,
  silhouette, textile pattern, waistline, manufacturing technique. The 2019 table has no neckline,
  collar or hood types, so those parts carry the silhouette symmetry ('symmetrical' / 'asymmetrical')
  the drawing shows. About 20% of images carry no attributes at all, as in the real train.csv.

Everything is a pure function of the seed: ImageIds are a hash of (seed, split, index), each image has
its own ``numpy`` generator seeded from (seed, split, index), JPEG parameters are explicit and no file
holds a time stamp, so the same seed gives byte-identical files. Rare categories are forced in
round-robin (the least-seen categories of the split so far are put on the front figure), so the
default 48 training images contain all 46 categories.

Presets (``preset=``, :data:`PRESETS`) choose how hard the images are; both use the same garments, drawing
code, layout and files:

* ``"realistic"`` (the default): everything above;
* ``"demo"``: an easier set for a few minutes of CPU training from random weights: one full-body figure per
  image on a plain studio background, dressed only in the big garments of ``PRESETS["demo"]["categories"]``
  (a top/t-shirt 1 over pants 6 or a skirt 8: two instances per image); nothing else is drawn except the
  garments' own parts (sleeves, necklines, pockets, zippers), which are not annotated and belong to their
  garment's mask. (A dress was left out: it and a top over a skirt look alike to a model trained for two
  minutes, which then scores near zero on both.)

The marker records the preset's name with the other parameters, so a set generated with another preset is
regenerated; changing a preset's settings must bump :data:`GENERATOR_VERSION`.

Example::

    from lib.synthetic import generate_dataset
    generate_dataset("data/synthetic", n_train=48, n_test=12, seed=0)

Modules, from the parts to the whole (each module's docstring says more):

* ``names``: category and attribute ids by name, hem heights by length attribute;
* ``masks``: ``_Mask``, a 0/1 mask that keeps the box of what was drawn into it;
* ``textures``: colour palettes and garment styles;
* ``scene``: ``_Scene``, the canvas with its occlusion groups and instances (:data:`MIN_VISIBLE_PX`);
* ``figure``: ``_Fig``, a person's geometry in head units, and its body;
* ``shapes``: garment outlines on a figure;
* ``outfits``: what a figure wears (a plan drawn from the generator);
* ``garments``, ``accessories``, ``decorations``: drawing the items of a plan;
* ``image``: one picture, :func:`make_image`;
* ``presets``: :data:`PRESETS`;
* ``formats``: the annotations as COCO instance files and in the 2020 edition's layout;
* ``dataset``: the files on disk, :func:`generate_dataset`.
"""
from .dataset import _SPLIT_CODE  # noqa: F401 (bench/aspect_bench.py seeds images as generate_dataset does)
from .dataset import GENERATOR_VERSION, MARKER, generate_dataset, image_id_for, image_size
from .image import make_image
from .names import attribute_id
from .presets import PRESETS, preset_settings
from .scene import MIN_VISIBLE_PX

__all__ = [
    "GENERATOR_VERSION",
    "MARKER",
    "MIN_VISIBLE_PX",
    "PRESETS",
    "attribute_id",
    "image_id_for",
    "image_size",
    "make_image",
    "preset_settings",
    "generate_dataset",
]

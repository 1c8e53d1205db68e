"""VOC-format data for WSSS.

Readers (VOC 2012, COCO 2014), a synthetic VOC-format dataset, joint transforms, atomic label/image IO and the
pre-flight data check (`wsss_blocks.data.check`).

PIL is needed to read and write files (the ``train`` extra); it is imported lazily, so importing
this package only needs torch and numpy.
"""

from wsss_blocks.data.check import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DataCheckError,
    DataCheckReport,
    DataProblem,
    SampleFiles,
    check_data_files,
    check_data_root,
    dataset_files,
)
from wsss_blocks.data.coco import (
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    COCO_NUM_CLASSES,
    COCOSegmentation,
    coco_id_to_contiguous,
    contiguous_to_coco_id,
)
from wsss_blocks.data.io import (
    atomic_write,
    load_image,
    load_label_png,
    save_image,
    save_label_png,
    voc_palette,
)
from wsss_blocks.data.synthetic import make_synthetic_voc, render_synthetic_sample, synthetic_class_names
from wsss_blocks.data.transforms import (
    GEOMETRY_FIELDS,
    ColorJitter,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomRescale,
    RandomResizeLong,
    RandomResizeShort,
    RecordGeometry,
    Resize,
    apply_geometry,
    identity_geometry,
    sample_generator,
)
from wsss_blocks.data.voc import (
    IGNORE_INDEX,
    VOC_CLASSES,
    VOC_NUM_CLASSES,
    VOCSegmentation,
    class_names_file,
    derive_train_aug,
    labels_from_annotation,
    labels_from_mask,
    load_cls_labels,
    read_split_list,
    save_cls_labels,
    write_split_list,
)

__all__ = [
    "COCO_CATEGORY_IDS",
    "COCO_CLASSES",
    "COCO_NUM_CLASSES",
    "COCOSegmentation",
    "coco_id_to_contiguous",
    "contiguous_to_coco_id",
    "atomic_write",
    "load_image",
    "load_label_png",
    "save_image",
    "save_label_png",
    "voc_palette",
    "make_synthetic_voc",
    "render_synthetic_sample",
    "synthetic_class_names",
    "ColorJitter",
    "Compose",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomRescale",
    "RandomResizeLong",
    "RandomResizeShort",
    "Resize",
    "RecordGeometry",
    "apply_geometry",
    "identity_geometry",
    "GEOMETRY_FIELDS",
    "sample_generator",
    "IGNORE_INDEX",
    "VOC_CLASSES",
    "VOC_NUM_CLASSES",
    "VOCSegmentation",
    "class_names_file",
    "derive_train_aug",
    "labels_from_annotation",
    "labels_from_mask",
    "load_cls_labels",
    "read_split_list",
    "save_cls_labels",
    "write_split_list",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "SampleFiles",
    "DataProblem",
    "DataCheckReport",
    "DataCheckError",
    "check_data_files",
    "check_data_root",
    "dataset_files",
]

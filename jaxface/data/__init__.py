"""Face / not-face data: the FaceData container, loaders, planted-bias data and the batcher.

Typical use::

  from jaxface import data
  sets = data.load_datasets(config.data)      # {'train', 'val', 'test'} FaceData
  batcher = data.Batcher(sets['train'], batch_size=32, seed=0)
  for batch in batcher.epoch_batches(epoch):
    ...  # batch.faces, batch.non_faces: (16, H, W, 3) float32 each
"""

from jaxface.data.batcher import Batch, Batcher
from jaxface.data.container import DataError, FaceData, concatenate, to_float
from jaxface.data.loaders import (DEFAULT_URL, IMAGE_EXTENSIONS, default_cache_dir,
                                  download_train_face_h5, load_folders, load_grouped_faces,
                                  load_h5, load_image_folder, load_manifest, manifest_splits,
                                  read_image, read_images, resize_images)
from jaxface.data.pipeline import (SOURCES, SPLITS, default_data_config, load_datasets,
                                   load_extra_test_sets, parse_named_paths, train_val_split)
from jaxface.data.test_sets import (LAYOUTS, attach_attributes, detect_layout,
                                    groups_from_attribute, load_test_set, load_test_sets,
                                    read_attribute_table)
from jaxface.data.planted import GROUPS, NON_FACE_KINDS, make_planted_bias
from jaxface.data.ppb import group_of_portrait, load_face_boxes, portrait_group

__all__ = [
    "Batch", "Batcher", "DataError", "FaceData", "concatenate", "to_float", "DEFAULT_URL",
    "IMAGE_EXTENSIONS", "default_cache_dir", "download_train_face_h5", "load_folders",
    "load_grouped_faces", "load_h5", "load_image_folder", "load_manifest", "manifest_splits",
    "read_image", "read_images",
    "resize_images", "SOURCES", "default_data_config", "load_datasets", "train_val_split",
    "SPLITS", "load_extra_test_sets", "parse_named_paths", "LAYOUTS", "attach_attributes",
    "detect_layout", "groups_from_attribute", "load_test_set", "load_test_sets",
    "read_attribute_table",
    "GROUPS", "NON_FACE_KINDS", "make_planted_bias", "group_of_portrait",
    "load_face_boxes", "portrait_group",
]

"""Face / not-face data: the FaceData container, loaders, planted-bias data and the batcher.

Typical use::

  from jaxface import data
  sets = data.load_datasets(config.data)      # {'train', 'val', 'test'} FaceData
  batcher = data.Batcher(sets['train'], batch_size=32, seed=0)
  for images, labels in batcher.epoch_batches(epoch):
    ...
"""

from jaxface.data.batcher import Batcher, batch_labels
from jaxface.data.container import DataError, FaceData, concatenate, to_float
from jaxface.data.loaders import (DEFAULT_URL, IMAGE_EXTENSIONS, default_cache_dir,
                                  download_train_face_h5, load_folders, load_grouped_faces,
                                  load_h5, load_image_folder, load_manifest, manifest_splits,
                                  read_image, read_images, resize_images)
from jaxface.data.pipeline import SOURCES, default_data_config, load_datasets, train_val_split
from jaxface.data.planted import GROUPS, NON_FACE_KINDS, make_planted_bias

__all__ = [
    "Batcher", "batch_labels", "DataError", "FaceData", "concatenate", "to_float", "DEFAULT_URL",
    "IMAGE_EXTENSIONS", "default_cache_dir", "download_train_face_h5", "load_folders",
    "load_grouped_faces", "load_h5", "load_image_folder", "load_manifest", "manifest_splits", "read_image", "read_images",
    "resize_images", "SOURCES", "default_data_config", "load_datasets", "train_val_split",
    "GROUPS", "NON_FACE_KINDS", "make_planted_bias",
]

"""Data that ships with vssm or that it generates, and the reading of image files.

``images``        image files of any channel count (PIL formats, .npy, .tif), sizes checked before decoding
``digits``        the 1,797 8x8 handwritten digits of scikit-learn as an image-folder dataset (classification)
``change_pairs``  generated before / after image pairs with change labels (change detection)
``shapes``        generated shapes scenes in COCO and ADE20K layouts (detection, segmentation)
``folders``       a generated set published atomically
"""

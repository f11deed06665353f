"""Write the example manifests next to this script (run: python manifests/make_examples.py)."""

from pathlib import Path

from sdfleet.jobs.examples import (
    augmentation_rows,
    box_augmentation_rows,
    marketing_rows,
    write_manifest,
)

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    print(write_manifest(marketing_rows(), HERE / "marketing.parquet"))
    print(write_manifest(augmentation_rows(HERE / "aug_images"), HERE / "augmentation.parquet"))
    boxes = box_augmentation_rows(HERE / "aug_images")  # the same source images, with boxes
    print(write_manifest(boxes, HERE / "augmentation_boxes.parquet"))

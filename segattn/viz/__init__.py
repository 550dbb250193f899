"""Pictures of what the attention modules attend to, drawn with NumPy and PIL.

Every renderer returns an (H, W, 3) uint8 array, which TensorBoard takes as it is
(``writer.add_image(tag, img, step, dataformats="HWC")``) and ``save_png`` writes to a file.

- ``attention_pictures(model, image, points)``: one forward on one image while the modules
  record (``segattn.models.attention.record``), then a picture per attention module: for
  query-dependent mechanisms (non-local, CC, DANet, OC, PSA, EMA, MHSA) one panel per marked
  pixel with its attention over the image; for query-independent ones (GC, CBAM, SGE, SA) their
  one spatial map; EMA's bases as a grid of responsibility maps (``<name>/bases``); channel gates as
  a strip (``<name>/gates``) and DANet's channel map as a matrix (``<name>/channels``).
- ``gate_pictures(model, samples, num_classes)``: channel gates averaged per class over several
  images, as a class x channel heat map (the SE and ECA papers' per-class excitation figures).
- ``log_attention_pictures(writer, model, image, points, step)`` (validation during training) and
  ``write_attention_pictures(model, dataset, out_dir, points)`` (eval.py): the above in one call.
- ``prediction_grid(samples, num_classes)`` (image | ground truth | prediction rows) and
  ``confusion_image(confusion, class_names=...)`` (the row-normalised confusion matrix, class names
  on its axes): validation's pictures in TensorBoard (``segattn.engine.logging.log_validation``).

The pictures explain themselves (``figure``): a title strip names the module (and, per panel, the
marked point (y, x)), and a colour bar at the right gives the values of the scale used. Channel
maps (EM bases, DANet's channel matrix, gates) are scaled to their own range (``robust_range``),
not to [0, 1], where they would be almost black. docs/pictures.md says how to read each kind.

One file per part, their names gathered here: ``draw.py`` (colour maps, panels, text, colour bars,
figures, PNGs), ``attention.py`` (the attention and gate pictures), ``confusion.py`` (the confusion
matrix picture).
"""

from .attention import (
    attention_pictures,
    class_mean_gates,
    default_points,
    gate_pictures,
    log_attention_pictures,
    write_attention_pictures,
)
from .confusion import confusion_image
from .draw import (
    BAR_GAP,
    BAR_WIDTH,
    COLORBAR_WIDTH,
    LABEL_SIZE,
    NAN_GREY,
    TITLE_SIZE,
    VIRIDIS,
    bases_grid,
    caption,
    colorbar,
    colormap,
    denormalize,
    figure,
    gate_heatmap,
    hstack,
    overlay,
    point_panels,
    points_figure,
    prediction_grid,
    render_points,
    robust_range,
    save_png,
    text_strip,
    titled,
    value_labels,
    vstack,
    with_colorbar,
)

__all__ = [
    "attention_pictures",
    "BAR_GAP",
    "BAR_WIDTH",
    "bases_grid",
    "caption",
    "class_mean_gates",
    "colorbar",
    "COLORBAR_WIDTH",
    "colormap",
    "default_points",
    "denormalize",
    "figure",
    "gate_heatmap",
    "gate_pictures",
    "hstack",
    "LABEL_SIZE",
    "log_attention_pictures",
    "NAN_GREY",
    "overlay",
    "point_panels",
    "points_figure",
    "prediction_grid",
    "render_points",
    "robust_range",
    "save_png",
    "text_strip",
    "TITLE_SIZE",
    "titled",
    "value_labels",
    "VIRIDIS",
    "vstack",
    "with_colorbar",
    "write_attention_pictures",
]

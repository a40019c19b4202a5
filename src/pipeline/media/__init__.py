"""Rich values for ``run.log``: images, video, audio, histograms, tables, HTML."""

from pipeline.media.audio import Audio
from pipeline.media.base import Media, MediaContext, MediaList
from pipeline.media.histogram import Histogram
from pipeline.media.html import Html
from pipeline.media.image import Image
from pipeline.media.table import Table
from pipeline.media.video import Video

__all__ = [
    "Audio",
    "Histogram",
    "Html",
    "Image",
    "Media",
    "MediaContext",
    "MediaList",
    "Table",
    "Video",
]

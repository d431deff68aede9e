"""The episode format (``episodes.format``) and local-or-URL file access (``episodes.io``), below every library."""

from episodes.format import (  # noqa: F401
    SUFFIX,
    Episode,
    EpisodeError,
    read_array,
    read_header,
    read_header_and_meta,
    read_meta,
    safe_id,
    streams,
)

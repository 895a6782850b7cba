"""The venue registry: numeric ids used in every record's ``venue`` column."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Venue:
    id: int
    name: str  # short name used in channels and file names
    mic: str  # ISO 10383 market identifier code
    protocol: str
    tz: str


VENUE_TABLE: tuple[Venue, ...] = (
    Venue(1, "nasdaq", "XNAS", "itch50", "America/New_York"),
    Venue(2, "nasdaq-bx", "XBOS", "itch50", "America/New_York"),
    Venue(3, "nasdaq-psx", "XPHL", "itch50", "America/New_York"),
)
VENUES_BY_NAME: dict[str, Venue] = {v.name: v for v in VENUE_TABLE}
VENUES_BY_ID: dict[int, Venue] = {v.id: v for v in VENUE_TABLE}

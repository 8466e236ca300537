"""nixpkgs' ``test_driver.duration``: durations as timedeltas or seconds."""

import datetime as dt

from vouch_driver.durations import as_seconds, as_timedelta

Duration = dt.timedelta | int | float

__all__ = ["Duration", "as_seconds", "as_timedelta"]

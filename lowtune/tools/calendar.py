"""The calendar tool: the date of the document being annotated, as a sentence.

`Calendar(date(2023, 1, 30))("")` -> "Today is Monday, January 30, 2023." An argument in ISO form
("2024-02-29") asks about that date instead; anything else is a failed call (None).
"""

from __future__ import annotations

import datetime as dt

MAX_LENGTH = 32


class Calendar:
    name = "Calendar"
    description = "Returns today's date."
    examples = [
        ("The meeting is planned for next week.",
         "The meeting is planned for [Calendar() -> Today is Monday, January 30, 2023.] next week."),
        ("The store opened 3 days ago.",
         "The store opened [Calendar() -> Today is Friday, March 10, 2023.] 3 days ago."),
    ]  # fmt: skip

    def __init__(self, today: dt.date | None = None):
        self.today = today

    def __call__(self, arg: str = "") -> str | None:
        if not isinstance(arg, str) or len(arg) > MAX_LENGTH:
            return None
        arg = arg.strip()
        try:
            day = dt.date.fromisoformat(arg) if arg else (self.today or dt.date.today())
        except ValueError:
            return None
        return f"Today is {day:%A}, {day:%B} {day.day}, {day.year}."

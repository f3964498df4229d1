"""The one exception type the data layer raises for bad input data, and how its messages name values."""

from __future__ import annotations

from typing import Literal

RowUnit = Literal["line", "row"]


class DataError(ValueError):
    """Bad input data, located as precisely as the source allows.

    ``row`` is a 1-based line number for line-oriented files (JSONL, CSV) and a 0-based row index for
    tabular sources (JSON arrays, parquet, ``datasets``); ``unit`` says which ("line" or "row"), and the
    message spells it out ("line 7" vs "row 6") so the two can't be confused. ``field`` is our field name
    (``chosen``, ``label``...) or None when the problem is not tied to one field.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        row: int | None = None,
        field: str | None = None,
        unit: RowUnit = "line",
        column: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.row = row
        self.field = field
        self.unit = unit
        # The source column differs from the field when a column_map renamed it; naming both lets the user
        # find the cell in their own file.
        self.column = column
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.file is not None:
            where.append(str(self.file))
        if self.row is not None:
            where.append(f"{self.unit} {self.row}")
        if self.field is not None:
            column = f" (column '{self.column}')" if self.column and self.column != self.field else ""
            where.append(f"field '{self.field}'{column}")
        return f"{', '.join(where)}: {self.message}" if where else self.message

    def __reduce__(self):  # keyword-only __init__ would otherwise break pickling (multiprocessing workers)
        state = dict(file=self.file, row=self.row, field=self.field, unit=self.unit, column=self.column)
        return (_rebuild, (self.message, state))


def _rebuild(message: str, state: dict) -> DataError:
    return DataError(message, **state)


def type_name(value: object) -> str:
    """How an error message names the JSON type of a bad value ("null", "a list", "a number (42)")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__

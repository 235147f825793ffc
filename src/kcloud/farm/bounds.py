"""What the database can store, checked where a request enters rather than discovered as a 500.

A value the client sends that its column cannot hold fails only when it is written or compared,
deep in a transaction, as a driver error the gateway can only answer with 500, and differently per
database: SQLite's INTEGER is 64-bit where PostgreSQL's is 32-bit, and PostgreSQL's text cannot
hold a NUL character where SQLite's can. So the admin API's request models bound every integer by
its column's type on every supported database (`INTEGER_MAX`) and refuse NUL in any text they carry
and non-finite numbers (`StorableBody`); the gateway refuses NUL in paths and query strings
(`kcloud.serving.gateway.request_line`). A refusal is a 400 that names the field, on both databases.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

#: The largest value an `Integer` column holds on every supported database (PostgreSQL: 32-bit).
INTEGER_MAX = 2**31 - 1
#: The largest value a `BigInteger` column holds (64-bit on both databases).
BIGINTEGER_MAX = 2**63 - 1
NUL = "\x00"


def find_nul(value: Any, where: str = "") -> str | None:
    """Where in a parsed JSON value (nested objects and arrays, keys too) a string holds NUL."""
    if isinstance(value, str):
        return (where or "value") if NUL in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and NUL in key:
                return f"{here} (the key)"
            found = find_nul(item, here)
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = find_nul(item, f"{where}[{index}]")
            if found is not None:
                return found
    return None


class StorableBody(BaseModel):
    """A request body every value of which a column can hold: no NUL character (U+0000) in any text,
    and no infinite or NaN number.

    The text is checked once over the raw input, before field validation: a text can reach a text
    column in many ways (a name, a description, a constraint that a placement reason then quotes),
    and PostgreSQL refuses NUL in all of them, so it is refused at the door, on SQLite alike. Python's
    JSON parser reads `1e400` as infinity and accepts `NaN`, which no JSON column (the audit log's
    details) can hold, and which mean nothing as a limit.
    """

    model_config = ConfigDict(allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _refuse_nul(cls, data: Any) -> Any:
        where = find_nul(data)
        if where is not None:
            raise PydanticCustomError(
                "nul_character", "{where}: text may not contain a NUL character (\\u0000)", {"where": where}
            )
        return data

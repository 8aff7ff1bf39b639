"""JSON schemas of ``vol -r json`` output for every ``vmrs.*`` plugin.

Written from what each column means, not from the plugins' code: counts, sizes in bytes,
addresses and offsets are JSON integers (Volatility's JSON renderer writes ``Hex`` as a
plain integer), flags are booleans, absent values are ``null``, and text is a string.
A column that is prose where a number belongs fails the schema.
"""

from __future__ import annotations

from typing import Any, Dict, List

import jsonschema

INT = {"type": "integer"}
NON_NEGATIVE = {"type": "integer", "minimum": 0}
STR = {"type": "string"}
BOOL = {"type": "boolean"}


def absent_or(schema: Dict[str, Any]) -> Dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def rows_schema(columns: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    return {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {**columns, "__children": {"type": "array", "maxItems": 0}},
            "required": sorted(columns),
            "additionalProperties": False,
        },
    }


SCHEMAS: Dict[str, Dict[str, Any]] = {
    "info": rows_schema(
        {
            "Field": STR,
            "Value": STR,
            "Number": absent_or(NON_NEGATIVE),
            "Flag": absent_or(BOOL),
        }
    ),
    "registers": rows_schema(
        {
            "VP": NON_NEGATIVE,
            "VTL": NON_NEGATIVE,
            "Register": STR,
            "Value": absent_or(NON_NEGATIVE),
            "Selector": absent_or(NON_NEGATIVE),
            "Base": absent_or(NON_NEGATIVE),
            "Limit": absent_or(NON_NEGATIVE),
            "Attributes": absent_or(NON_NEGATIVE),
            "Decoded": STR,
        }
    ),
    "memmap": rows_schema(
        {
            "Range": NON_NEGATIVE,
            "GPA start": NON_NEGATIVE,
            "GPA end": NON_NEGATIVE,
            "Pages": NON_NEGATIVE,
            "Saved RAM offset": NON_NEGATIVE,
            "RamBlocks": STR,
            "First RamBlock": NON_NEGATIVE,
            "Last RamBlock": NON_NEGATIVE,
            "Absent RamBlocks": NON_NEGATIVE,
            **{kind: absent_or(NON_NEGATIVE) for kind in ("Raw", "Fill", "XPRESS")},
            **{kind: absent_or(NON_NEGATIVE) for kind in ("Missing", "Bad")},
            "Flags": STR,
        }
    ),
    "keys": rows_schema(
        {
            "Path": STR,
            "Type": STR,
            "Size": NON_NEGATIVE,
            "File object": BOOL,
            "Value": STR,
            "Integer": absent_or(INT),
            "File output": absent_or(STR),
        }
    ),
    "pescan": rows_schema(
        {
            "Space": STR,
            "Address": NON_NEGATIVE,
            "Machine": STR,
            "Image size": NON_NEGATIVE,
            "Timestamp": NON_NEGATIVE,
            "Link time": absent_or({"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT"}),
            "Subsystem": STR,
            "PDB name": absent_or(STR),
            "PDB GUID": absent_or(STR),
            "PDB age": absent_or(NON_NEGATIVE),
            "OriginalFilename": absent_or(STR),
            "Pages read": NON_NEGATIVE,
            "Pages total": NON_NEGATIVE,
            "Notes": STR,
        }
    ),
    "export": rows_schema(
        {
            "Format": STR,
            "File output": STR,
            "Size": NON_NEGATIVE,
            "SHA-256": absent_or({"type": "string", "pattern": "^[0-9a-f]{64}$"}),
            "VP": absent_or(NON_NEGATIVE),
            "Notes": STR,
        }
    ),
    "vtop": rows_schema(
        {
            "VP": NON_NEGATIVE,
            "VTL": NON_NEGATIVE,
            "Mode": STR,
            "Level": STR,
            "Entry address": absent_or(NON_NEGATIVE),
            "Entry value": absent_or(NON_NEGATIVE),
            "Flags": STR,
            "Maps": absent_or(NON_NEGATIVE),
            "Result": STR,
        }
    ),
}


def check_rows(plugin: str, rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Validate ``vol -r json`` rows of ``vmrs.<plugin>``; returns them for chaining."""
    jsonschema.validate(rows, SCHEMAS[plugin])
    return rows

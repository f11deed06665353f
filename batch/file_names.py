"""Row ids name files (``images/<id>.png``, ``<id>_<k>.png`` for variants): which characters an
id may hold and how long the names it makes may be, checked when the manifest is validated.

- No control character (C0, C1: U+0085 included), line/paragraph separator or invisible
  format character (bidi overrides and isolates, zero-width marks): they hide or reorder what
  a file name shows, and some filesystems and tools refuse them.
- A file name is at most 255 bytes on every common filesystem; an image is written under a
  temporary name first (`batch.paths.write_atomic`: ``<name>.<ext>.tmp``), so that name, with
  the longest extension, must fit. Non-ASCII ids take several bytes a character.

Pure: the standard library only.
"""

from __future__ import annotations

import unicodedata

MAX_NAME_BYTES = 255
LONGEST_SUFFIX = ".webp.tmp"  # the longest image extension, then write_atomic's temporary one
_HIDDEN_CATEGORIES = {"Cc": "a control character", "Cf": "an invisible format character"}
_HIDDEN_CATEGORIES |= {"Zl": "a line separator", "Zp": "a paragraph separator"}
_HIDDEN_CATEGORIES |= {"Cs": "a lone surrogate"}


def id_character_problems(row_id: str) -> list[str]:
    """The first character of `row_id` that must not name a file, with the fix ([] if none)."""
    for position, char in enumerate(row_id):
        kind = _HIDDEN_CATEGORIES.get(unicodedata.category(char))
        if kind is not None:
            name = unicodedata.name(char, "unnamed")
            return [
                f"ids name files: character {position} is U+{ord(char):04X} ({name}), {kind} "
                "that hides or reorders what a file name shows; remove it"
            ]
    return []


def file_name_problems(stem: str) -> list[str]:
    """Whether files named `stem` + extension (and their temporary names) fit the limit."""
    size = len(stem.encode("utf-8", "surrogatepass")) + len(LONGEST_SUFFIX)
    if size <= MAX_NAME_BYTES:
        return []
    room = MAX_NAME_BYTES - len(LONGEST_SUFFIX)
    return [
        f"ids name files: {stem!r} with its extension and temporary suffix is {size} bytes in "
        f"UTF-8, over the {MAX_NAME_BYTES} a file name may have; shorten the id so the name "
        f"(variant suffix '_<k>' included) is at most {room} bytes"
    ]

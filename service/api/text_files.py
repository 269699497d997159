"""What an uploaded document must be to be stored or sent on: UTF-8 text, within its size, not empty."""

from __future__ import annotations

from service.errors import PayloadTooLarge, ValidationFailed


def decode_text(name: str, data: bytes, limit: int) -> str:
    """The text of an upload read as ``data`` (at most ``limit + 1`` bytes, so oversize shows): 413 or 422 else."""
    if len(data) > limit:
        raise PayloadTooLarge(f"{name} is larger than {limit} bytes", details={"filename": name})
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationFailed(f"{name} is not valid UTF-8 text", details={"filename": name}) from None
    if "\x00" in text:
        raise ValidationFailed(f"{name} contains NUL characters", details={"filename": name})
    if not text.strip():
        raise ValidationFailed(f"{name} is empty", details={"filename": name})
    return text

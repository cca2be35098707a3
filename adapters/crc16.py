"""CRC-16 with the reflected polynomial A001H (8005H), as both station protocols use it.

SL 651 checks frames with CRC-16/MODBUS; HJ 212 feeds its bytes into the same eight steps in
another order (see adapters/hj212/crc.py). Both look the steps up in one table.
"""

from __future__ import annotations

from typing import Final


def _steps() -> tuple[int, ...]:
    """The eight reflected A001H steps applied to each possible byte, computed once."""
    rows = []
    for byte in range(256):
        value = byte
        for _ in range(8):
            value = (value >> 1) ^ 0xA001 if value & 1 else value >> 1
        rows.append(value)
    return tuple(rows)


STEPS: Final = _steps()


def crc16_modbus(data: bytes | bytearray | memoryview, crc: int = 0xFFFF) -> int:
    """CRC-16/MODBUS (polynomial 8005H reflected, initial FFFFH)."""
    table = STEPS
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc

"""The HJ 212 packet checksum: CRC16 as HJ 212-2017 Appendix A defines it, over the data segment.

The register starts at 0xFFFF; each byte is XORed into the register's *low* byte after the
register is shifted right by eight (which is what sets it apart from CRC-16/MODBUS), then eight
reflected steps with the polynomial 0xA001 follow. The packet carries the result as four hex
digits, upper or lower case (devices send both).
"""

from __future__ import annotations

from adapters.crc16 import STEPS


def crc16(segment: bytes | bytearray | memoryview) -> int:
    """The Appendix A CRC of ``segment`` (the data segment, between the length and the CRC)."""
    register = 0xFFFF
    for byte in segment:
        # (register >> 8) ^ byte fits in a byte, so the eight steps are one table look-up
        register = STEPS[(register >> 8) ^ byte]
    return register


def crc_text(segment: bytes | bytearray | memoryview) -> bytes:
    """The CRC of ``segment`` as the packet carries it: four upper-case hex digits."""
    return b"%04X" % crc16(segment)

"""The element table of SL 651-2014: what each element identifier measures, in which unit.

An element is written as its identifier (one byte; FFH introduces a two-byte identifier), a
definition byte (upper 5 bits the value's byte count, lower 3 bits its decimals) and the value in
BCD. In ASCII frames the same element is written with its letter code (``Z`` for 39H) and the value
as decimal text. The metric code of a measurement is the identifier as upper-case hex ("39"), the
code routing, station limits and the edge agent already use.

Our own table, from the standard's element list; codes not in it are still decoded (their number
with no unit), so a station's extension elements are not lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Element:
    code: str  # identifier as upper-case hex, e.g. "39"
    ascii: str  # identifier in ASCII frames, e.g. "Z"
    name: str
    unit: str


def _table(*rows: tuple[str, str, str, str]) -> dict[str, Element]:
    return {code: Element(code, ascii, name, unit) for code, ascii, name, unit in rows}


ELEMENTS: Final[dict[str, Element]] = _table(
    ("01", "AC", "断面面积", "m2"),
    ("02", "AI", "瞬时气温", "°C"),
    ("03", "C", "瞬时水温", "°C"),
    ("05", "DT", "时段长 (HH.mm)", "h"),
    ("06", "ED", "日蒸发量", "mm"),
    ("07", "EJ", "当前蒸发", "mm"),
    ("08", "FL", "气压", "hPa"),
    ("09", "GH", "闸坝、水库闸门开启高度", "m"),
    ("0A", "GN", "输水设备、闸门(组)编号", ""),
    ("0B", "GS", "输水设备类别", ""),
    ("0C", "GT", "闸门开启孔数", ""),
    ("0D", "GTP", "地温", "°C"),
    ("0E", "H", "地下水瞬时埋深", "m"),
    ("0F", "HW", "波浪高度", "m"),
    ("10", "M10", "10 cm 处土壤含水量", "%"),
    ("11", "M20", "20 cm 处土壤含水量", "%"),
    ("12", "M30", "30 cm 处土壤含水量", "%"),
    ("13", "M40", "40 cm 处土壤含水量", "%"),
    ("14", "M50", "50 cm 处土壤含水量", "%"),
    ("15", "M60", "60 cm 处土壤含水量", "%"),
    ("16", "M80", "80 cm 处土壤含水量", "%"),
    ("17", "M100", "100 cm 处土壤含水量", "%"),
    ("18", "MST", "湿度", "%"),
    ("19", "NS", "开机台数", ""),
    ("1A", "P1", "1 小时时段降水量", "mm"),
    ("1B", "P2", "2 小时时段降水量", "mm"),
    ("1C", "P3", "3 小时时段降水量", "mm"),
    ("1D", "P6", "6 小时时段降水量", "mm"),
    ("1E", "P12", "12 小时时段降水量", "mm"),
    ("1F", "PD", "日降水量", "mm"),
    ("20", "PJ", "当前降水量", "mm"),
    ("21", "PN01", "1 分钟时段降水量", "mm"),
    ("22", "PN05", "5 分钟时段降水量", "mm"),
    ("23", "PN10", "10 分钟时段降水量", "mm"),
    ("24", "PN30", "30 分钟时段降水量", "mm"),
    ("25", "PR", "暴雨量", "mm"),
    ("26", "PT", "降水量累计值", "mm"),
    ("27", "Q", "瞬时流量、抽水流量", "m3/s"),
    ("28", "Q1", "取(排)水口流量 1", "m3/s"),
    ("29", "Q2", "取(排)水口流量 2", "m3/s"),
    ("2A", "Q3", "取(排)水口流量 3", "m3/s"),
    ("2B", "Q4", "取(排)水口流量 4", "m3/s"),
    ("2C", "Q5", "取(排)水口流量 5", "m3/s"),
    ("2D", "Q6", "取(排)水口流量 6", "m3/s"),
    ("2E", "Q7", "取(排)水口流量 7", "m3/s"),
    ("2F", "Q8", "取(排)水口流量 8", "m3/s"),
    ("30", "QA", "总出库流量、过闸总流量", "m3/s"),
    ("31", "QZ", "输水设备流量、过闸(组)流量", "m3/s"),
    ("32", "SW", "输沙量", "10^4 t"),
    ("33", "UC", "风向", ""),
    ("34", "UE", "风力", "级"),
    ("35", "US", "风速", "m/s"),
    ("36", "VA", "断面平均流速", "m/s"),
    ("37", "VJ", "当前瞬时流速", "m/s"),
    ("38", "VT", "电源电压", "V"),
    ("39", "Z", "瞬时河道水位、潮位", "m"),
    ("3A", "ZB", "库(闸)站下游水位", "m"),
    ("3B", "ZU", "库(闸)站上游水位", "m"),
    ("3C", "Z1", "取(排)水口上游水位 1", "m"),
    ("3D", "Z2", "取(排)水口上游水位 2", "m"),
    ("3E", "Z3", "取(排)水口上游水位 3", "m"),
    ("3F", "Z4", "取(排)水口上游水位 4", "m"),
    ("40", "Z5", "取(排)水口上游水位 5", "m"),
    ("41", "Z6", "取(排)水口上游水位 6", "m"),
    ("42", "Z7", "取(排)水口上游水位 7", "m"),
    ("43", "Z8", "取(排)水口上游水位 8", "m"),
    ("44", "SQ", "含沙量", "kg/m3"),
    ("45", "ZT", "遥测站状态及报警信息", ""),
    ("46", "PH", "pH 值", ""),
    ("47", "DO", "溶解氧", "mg/L"),
    ("48", "COND", "电导率", "uS/cm"),
    ("49", "TURB", "浊度", "NTU"),
    ("4A", "CODMN", "高锰酸盐指数", "mg/L"),
    ("4B", "REDOX", "氧化还原电位", "mV"),
    ("4C", "NH4N", "氨氮", "mg/L"),
    ("4D", "TP", "总磷", "mg/L"),
    ("4E", "TN", "总氮", "mg/L"),
    ("4F", "TOC", "总有机碳", "mg/L"),
    ("50", "CU", "铜", "mg/L"),
    ("51", "ZN", "锌", "mg/L"),
    ("52", "SE", "硒", "mg/L"),
    ("53", "AS", "砷", "mg/L"),
    ("54", "THG", "总汞", "mg/L"),
    ("55", "CD", "镉", "mg/L"),
    ("56", "PB", "铅", "mg/L"),
    ("57", "CHLA", "叶绿素 a", "mg/L"),
    ("58", "WP1", "水压 1", "kPa"),
    ("59", "WP2", "水压 2", "kPa"),
    ("5A", "WP3", "水压 3", "kPa"),
    ("5B", "WP4", "水压 4", "kPa"),
    ("5C", "WP5", "水压 5", "kPa"),
    ("5D", "WP6", "水压 6", "kPa"),
    ("5E", "WP7", "水压 7", "kPa"),
    ("5F", "WP8", "水压 8", "kPa"),
    ("60", "SYL1", "水表 1 剩余水量", "m3"),
    ("61", "SYL2", "水表 2 剩余水量", "m3"),
    ("62", "SYL3", "水表 3 剩余水量", "m3"),
    ("63", "SYL4", "水表 4 剩余水量", "m3"),
    ("64", "SYL5", "水表 5 剩余水量", "m3"),
    ("65", "SYL6", "水表 6 剩余水量", "m3"),
    ("66", "SYL7", "水表 7 剩余水量", "m3"),
    ("67", "SYL8", "水表 8 剩余水量", "m3"),
    ("68", "SBL1", "水表 1 每小时水量", "m3/h"),
    ("69", "SBL2", "水表 2 每小时水量", "m3/h"),
    ("6A", "SBL3", "水表 3 每小时水量", "m3/h"),
    ("6B", "SBL4", "水表 4 每小时水量", "m3/h"),
    ("6C", "SBL5", "水表 5 每小时水量", "m3/h"),
    ("6D", "SBL6", "水表 6 每小时水量", "m3/h"),
    ("6E", "SBL7", "水表 7 每小时水量", "m3/h"),
    ("6F", "SBL8", "水表 8 每小时水量", "m3/h"),
    ("70", "VTA", "交流 A 相电压", "V"),
    ("71", "VTB", "交流 B 相电压", "V"),
    ("72", "VTC", "交流 C 相电压", "V"),
    ("73", "VIA", "交流 A 相电流", "A"),
    ("74", "VIB", "交流 B 相电流", "A"),
    ("75", "VIC", "交流 C 相电流", "A"),
    # Series of one hour: 12 five-minute values each (rainfall 1 byte, water levels 2 bytes, HEX).
    ("F4", "DRP", "1 小时内每 5 分钟时段雨量", "mm"),
    ("F5", "DRZ1", "1 小时内 5 分钟间隔相对水位 1", "m"),
    ("F6", "DRZ2", "1 小时内 5 分钟间隔相对水位 2", "m"),
    ("F7", "DRZ3", "1 小时内 5 分钟间隔相对水位 3", "m"),
    ("F8", "DRZ4", "1 小时内 5 分钟间隔相对水位 4", "m"),
    ("F9", "DRZ5", "1 小时内 5 分钟间隔相对水位 5", "m"),
    ("FA", "DRZ6", "1 小时内 5 分钟间隔相对水位 6", "m"),
    ("FB", "DRZ7", "1 小时内 5 分钟间隔相对水位 7", "m"),
    ("FC", "DRZ8", "1 小时内 5 分钟间隔相对水位 8", "m"),
)

BY_ASCII: Final[dict[str, Element]] = {e.ascii: e for e in ELEMENTS.values()}

#: Codes with a meaning of their own in a body, not readings.
TIME_STEP: Final = 0x04  # DRxxx: the step of a series (day, hour, minute in BCD)
OBSERVED: Final = 0xF0  # F0F0 TT: observation time
STATION: Final = 0xF1  # F1F1 ST: station address and type
MANUAL: Final = 0xF2  # F2F2 RGZS: manual readings, as text
PICTURE: Final = 0xF3  # F3F3 PIC: picture data
STATUS: Final = "45"  # ZT: 32 status and alarm bits, HEX not BCD
RAIN_SERIES: Final = "F4"  # 12 one-byte HEX rainfalls of 0.1 mm, FFH missing
LEVEL_SERIES: Final = frozenset({"F5", "F6", "F7", "F8", "F9", "FA", "FB", "FC"})  # 12 two-byte HEX levels in cm

#: Station types (遥测站分类码), the letter the type byte carries.
STATION_TYPES: Final[dict[str, str]] = {
    "P": "降水",
    "H": "河道",
    "K": "水库(湖泊)",
    "Z": "闸坝",
    "D": "泵站",
    "T": "潮汐",
    "M": "墒情",
    "G": "地下水",
    "Q": "水质",
    "I": "取水口",
    "O": "排水口",
}


def element(code: str) -> Element:
    """The element of a code; one not in the table keeps its code and has no unit."""
    return ELEMENTS.get(code) or Element(code, code, f"要素 {code}H", "")

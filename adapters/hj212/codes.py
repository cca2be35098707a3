"""The code tables of HJ 212: pollutant (monitoring factor) codes, system types and command codes.

Written for this project from the code lists of HJ 212-2017 Appendix B and, for the codes stations
still send in the older form, HJ/T 212-2005 (``011`` for COD, ``B01`` for waste-water flow). It is a
selection of the codes seen in air, water, noise and flue-gas stations, not the whole appendix: a
code that is missing here is still decoded, only without a name and a unit.

Units follow the standard's tables. Ambient air-quality stations (system type 22) report the
gaseous pollutants in µg/m³ where flue-gas stations report mg/m³; ``unit_of`` applies that. A
``Cou`` value (the total over the interval) has its own unit: kg for a pollutant, m³ for a flow.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Pollutant:
    """One monitoring factor: its code, name, unit of a concentration/reading and of a total."""

    code: str
    name: str
    unit: str
    total_unit: str = ""  # the unit of ``Cou`` values; "" when the factor has no total
    current: str = ""  # for a 2005-era code: the HJ 212-2017 code of the same factor


def _p(code: str, name: str, unit: str, total_unit: str = "", current: str = "") -> tuple[str, Pollutant]:
    return code, Pollutant(code, name, unit, total_unit, current)


POLLUTANTS: dict[str, Pollutant] = dict(
    [
        # -- water: waste water and surface water (HJ 212-2017) ------------------------------------
        _p("w00000", "废水流量 (waste-water flow)", "L/s", "m³"),
        _p("w01001", "pH值 (pH)", ""),
        _p("w01002", "色度 (colour)", "倍"),
        _p("w01003", "浊度 (turbidity)", "NTU"),
        _p("w01009", "溶解氧 (dissolved oxygen)", "mg/L"),
        _p("w01010", "水温 (water temperature)", "℃"),
        _p("w01012", "悬浮物 (suspended solids)", "mg/L", "kg"),
        _p("w01014", "电导率 (conductivity)", "µS/cm"),
        _p("w01017", "五日生化需氧量 (BOD5)", "mg/L", "kg"),
        _p("w01018", "化学需氧量 (COD)", "mg/L", "kg"),
        _p("w01019", "高锰酸盐指数 (permanganate index)", "mg/L", "kg"),
        _p("w01020", "总有机碳 (total organic carbon)", "mg/L", "kg"),
        _p("w02003", "粪大肠菌群 (faecal coliforms)", "个/L"),
        _p("w19002", "阴离子表面活性剂 (anionic surfactants)", "mg/L", "kg"),
        _p("w20111", "总汞 (total mercury)", "mg/L", "kg"),
        _p("w20115", "总镉 (total cadmium)", "mg/L", "kg"),
        _p("w20116", "总铬 (total chromium)", "mg/L", "kg"),
        _p("w20117", "六价铬 (hexavalent chromium)", "mg/L", "kg"),
        _p("w20119", "总砷 (total arsenic)", "mg/L", "kg"),
        _p("w20120", "总铅 (total lead)", "mg/L", "kg"),
        _p("w20121", "总镍 (total nickel)", "mg/L", "kg"),
        _p("w20122", "总铜 (total copper)", "mg/L", "kg"),
        _p("w20123", "总锌 (total zinc)", "mg/L", "kg"),
        _p("w21001", "总氮 (total nitrogen)", "mg/L", "kg"),
        _p("w21003", "氨氮 (ammonia nitrogen)", "mg/L", "kg"),
        _p("w21011", "总磷 (total phosphorus)", "mg/L", "kg"),
        _p("w21016", "氰化物 (cyanide)", "mg/L", "kg"),
        _p("w21017", "氟化物 (fluoride)", "mg/L", "kg"),
        _p("w21019", "硫化物 (sulphide)", "mg/L", "kg"),
        _p("w22001", "石油类 (petroleum)", "mg/L", "kg"),
        _p("w23002", "挥发酚 (volatile phenols)", "mg/L", "kg"),
        # -- air: flue gas and ambient air (HJ 212-2017) -------------------------------------------
        _p("a00000", "废气流量 (flue-gas flow)", "m³/s", "m³"),
        _p("a01001", "温度 (air temperature)", "℃"),
        _p("a01002", "湿度 (relative humidity)", "%"),
        _p("a01006", "气压 (air pressure)", "kPa"),
        _p("a01007", "风速 (wind speed)", "m/s"),
        _p("a01008", "风向 (wind direction)", "°"),
        _p("a01011", "烟气流速 (flue-gas velocity)", "m/s"),
        _p("a01012", "烟气温度 (flue-gas temperature)", "℃"),
        _p("a01013", "烟气压力 (flue-gas pressure)", "kPa"),
        _p("a01014", "烟气湿度 (flue-gas humidity)", "%"),
        _p("a05002", "甲烷 (methane)", "mg/m³", "kg"),
        _p("a05024", "臭氧 (ozone)", "µg/m³"),
        _p("a19001", "氧气含量 (oxygen content)", "%"),
        _p("a21002", "氮氧化物 (nitrogen oxides)", "mg/m³", "kg"),
        _p("a21003", "一氧化氮 (nitric oxide)", "mg/m³", "kg"),
        _p("a21004", "二氧化氮 (nitrogen dioxide)", "mg/m³", "kg"),
        _p("a21005", "一氧化碳 (carbon monoxide)", "mg/m³", "kg"),
        _p("a21026", "二氧化硫 (sulphur dioxide)", "mg/m³", "kg"),
        _p("a24088", "非甲烷总烃 (non-methane hydrocarbons)", "mg/m³", "kg"),
        _p("a25002", "苯 (benzene)", "mg/m³", "kg"),
        _p("a25003", "甲苯 (toluene)", "mg/m³", "kg"),
        _p("a34002", "PM10", "µg/m³"),
        _p("a34004", "PM2.5", "µg/m³"),
        _p("a34013", "颗粒物/烟尘 (particulate matter, flue dust)", "mg/m³", "kg"),
        # -- noise (HJ 212-2017): sound levels in dB(A) ----------------------------------------------
        _p("Leq", "等效声级 (equivalent continuous sound level)", "dB(A)"),
        _p("L5", "累积百分声级 L5", "dB(A)"),
        _p("L10", "累积百分声级 L10", "dB(A)"),
        _p("L50", "累积百分声级 L50", "dB(A)"),
        _p("L90", "累积百分声级 L90", "dB(A)"),
        _p("L95", "累积百分声级 L95", "dB(A)"),
        _p("Ld", "昼间等效声级 (day level)", "dB(A)"),
        _p("Ln", "夜间等效声级 (night level)", "dB(A)"),
        _p("Ldn", "昼夜等效声级 (day-night level)", "dB(A)"),
        _p("LMx", "最大声级 (maximum level)", "dB(A)"),
        _p("LMn", "最小声级 (minimum level)", "dB(A)"),
        _p("SD", "标准偏差 (standard deviation of the level)", "dB"),
        # -- the HJ/T 212-2005 codes still in service, with their HJ 212-2017 successors ---------------
        _p("B01", "污水流量 (waste-water flow, 2005 code)", "L/s", "m³", "w00000"),
        _p("001", "pH值 (pH, 2005 code)", "", "", "w01001"),
        _p("002", "色度 (colour, 2005 code)", "倍", "", "w01002"),
        _p("003", "悬浮物 (suspended solids, 2005 code)", "mg/L", "kg", "w01012"),
        _p("010", "五日生化需氧量 (BOD5, 2005 code)", "mg/L", "kg", "w01017"),
        _p("011", "化学需氧量 (COD, 2005 code)", "mg/L", "kg", "w01018"),
        _p("015", "总有机碳 (total organic carbon, 2005 code)", "mg/L", "kg", "w01020"),
        _p("020", "总汞 (total mercury, 2005 code)", "mg/L", "kg", "w20111"),
        _p("022", "总镉 (total cadmium, 2005 code)", "mg/L", "kg", "w20115"),
        _p("023", "总铬 (total chromium, 2005 code)", "mg/L", "kg", "w20116"),
        _p("024", "六价铬 (hexavalent chromium, 2005 code)", "mg/L", "kg", "w20117"),
        _p("026", "总砷 (total arsenic, 2005 code)", "mg/L", "kg", "w20119"),
        _p("027", "总铅 (total lead, 2005 code)", "mg/L", "kg", "w20120"),
        _p("060", "氨氮 (ammonia nitrogen, 2005 code)", "mg/L", "kg", "w21003"),
        _p("065", "总氮 (total nitrogen, 2005 code)", "mg/L", "kg", "w21001"),
        _p("080", "石油类 (petroleum, 2005 code)", "mg/L", "kg", "w22001"),
        _p("101", "总磷 (total phosphorus, 2005 code)", "mg/L", "kg", "w21011"),
        _p("B02", "废气流量 (flue-gas flow, 2005 code)", "m³/s", "m³", "a00000"),
        _p("01", "烟尘 (flue dust, 2005 code)", "mg/m³", "kg", "a34013"),
        _p("02", "二氧化硫 (sulphur dioxide, 2005 code)", "mg/m³", "kg", "a21026"),
        _p("03", "氮氧化物 (nitrogen oxides, 2005 code)", "mg/m³", "kg", "a21002"),
        _p("S01", "氧气含量 (oxygen content, 2005 code)", "%", "", "a19001"),
        _p("S02", "烟气流速 (flue-gas velocity, 2005 code)", "m/s", "", "a01011"),
        _p("S03", "烟气温度 (flue-gas temperature, 2005 code)", "℃", "", "a01012"),
        _p("S05", "烟气湿度 (flue-gas humidity, 2005 code)", "%", "", "a01014"),
    ]
)

#: Gaseous pollutants that ambient air-quality stations report in µg/m³ (CO stays in mg/m³).
_AMBIENT_MICROGRAMS = frozenset({"a21002", "a21003", "a21004", "a21026"})
AIR_QUALITY_SYSTEM = "22"

#: Value kinds (the part after ``-`` in ``w01018-Rtd``) whose values are numbers to measure.
NUMERIC_KINDS = frozenset(
    {
        "Rtd",  # real-time value
        "Avg",
        "Min",
        "Max",
        "Cou",  # total over the interval
        "ZsRtd",  # values converted to the reference oxygen content (flue gas)
        "ZsAvg",
        "ZsMin",
        "ZsMax",
        "RS",  # equipment run state: 0 stopped, 1 running, 2 calibrating, 3 maintenance, 4 alarm, 5 back-flushing
        "RT",  # equipment run time in hours
        "Data",  # noise levels
        "DayData",
        "NightData",
        "Ala",  # the value that raised an alarm (HJ/T 212-2005 CN 2072)
    }
)
#: Kinds that qualify the numbers of the same code rather than being numbers themselves.
QUALIFIER_KINDS = frozenset({"Flag", "EFlag", "SampleTime"})
#: Kinds that a threshold given for the bare code (``w01018``) applies to: concentrations and levels.
LIMITED_KINDS = frozenset({"Rtd", "Avg", "Min", "Max", "ZsRtd", "ZsAvg", "ZsMin", "ZsMax", "Data", "Ala"})


def pollutant(code: str) -> Pollutant | None:
    return POLLUTANTS.get(code)


def unit_of(code: str, kind: str, system: str) -> str:
    """The unit of a ``code``-``kind`` value from a station of system type ``system`` ("" if unknown)."""
    if kind == "RT":
        return "h"
    if kind == "RS":
        return ""
    known = POLLUTANTS.get(code)
    if known is None:
        return ""
    if kind == "Cou":
        return known.total_unit
    if system == AIR_QUALITY_SYSTEM and code in _AMBIENT_MICROGRAMS:
        return "µg/m³"
    return known.unit


#: System types (ST): what kind of station sent the packet.
SYSTEMS: dict[str, str] = {
    "21": "surface water quality",
    "22": "air quality",
    "23": "acoustic environment quality",
    "24": "groundwater quality",
    "25": "soil quality",
    "26": "sea water quality",
    "27": "volatile organic compounds",
    "31": "air pollution source",
    "32": "surface water pollution source",
    "33": "groundwater pollution source",
    "34": "marine pollution source",
    "35": "soil pollution source",
    "36": "noise pollution source",
    "37": "vibration source",
    "38": "radioactive source",
    "39": "construction dust",
    "41": "electromagnetic radiation source",
    "51": "flue-gas emission process",
    "52": "waste-water discharge process",
    "91": "system interaction",
}

#: Command codes (CN) this package acts on.
CN_REALTIME = "2011"
CN_RUN_STATE = "2021"
CN_DAILY = "2031"
CN_DAILY_RUN_TIME = "2041"
CN_MINUTE = "2051"
CN_HOURLY = "2061"
CN_RESTART = "2081"  # the data logger reports when it (re)started
CN_SERIAL_NUMBERS = "3019"  # the station uploads its instruments' serial numbers
CN_DEVICE_INFO = "3020"  # the station uploads an instrument's log, state or parameters
CN_SET_TIME = "1012"  # the upper system sets the station's clock
CN_TIME_REQUEST = "1013"  # the station asks for its clock to be set
CN_REQUEST_ANSWER = "9011"
CN_RESULT = "9012"
CN_NOTICE_ANSWER = "9013"
CN_DATA_ANSWER = "9014"

#: The data uploads and the observation interval each one reports.
DATA_INTERVALS: dict[str, str] = {
    CN_REALTIME: "realtime",
    CN_RUN_STATE: "realtime",
    CN_MINUTE: "PT1M",
    CN_HOURLY: "PT1H",
    CN_DAILY: "P1D",
    CN_DAILY_RUN_TIME: "P1D",
}
ANSWERS = frozenset({CN_REQUEST_ANSWER, CN_RESULT, CN_NOTICE_ANSWER, CN_DATA_ANSWER})

#: 9011 QnRtn: the answer to a request.
QN_READY = 1  # request accepted, about to be carried out
QN_REFUSED = 2
QN_BAD_PASSWORD = 3
QN_BAD_MN = 4
QN_BAD_CRC = 9
QN_UNKNOWN_ERROR = 100

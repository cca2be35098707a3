"""Names of the national early-warning event types (预警事件类型) that GB/T 35965 documents carry
as ``eventType`` codes.

Only the meteorological class (``11B``, 气象灾害) codes that several independent public
descriptions of the national classification agree on are listed; an unlisted code is not guessed
at: the decoder then uses the code itself as the event's name.
"""

from __future__ import annotations

#: eventType code -> event name, as the national warning system names them.
METEOROLOGICAL_EVENTS: dict[str, str] = {
    "11B01": "台风",
    "11B03": "暴雨",
    "11B04": "暴雪",
    "11B05": "寒潮",
    "11B06": "大风",
    "11B07": "沙尘暴",
    "11B09": "高温",
    "11B14": "雷电",
    "11B15": "冰雹",
    "11B16": "霜冻",
    "11B17": "大雾",
    "11B19": "霾",
    "11B20": "雷雨大风",
    "11B21": "道路结冰",
    "11B22": "干旱",
}


def event_name(code: str) -> str:
    """The name of an eventType code, or the code itself when the table does not know it."""
    return METEOROLOGICAL_EVENTS.get(code.upper(), code)

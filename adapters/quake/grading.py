"""The grade of an earthquake from its magnitude: the one table the quake adapter grades by.

The 国家地震应急预案 (national earthquake emergency plan, 2012 revision) grades an earthquake
disaster by its casualties and losses, and gives magnitude thresholds for the first assessment
(初判) before those are known. For an earthquake in a fairly densely populated area
(人口较密集地区) they are:

======== ================== ========================= ==========
M        grade              four-colour severity      priority
======== ================== ========================= ==========
>= 7.0   特别重大 (I)        RED                       0
6.0-7.0  重大 (II)           ORANGE                    0
5.0-6.0  较大 (III)          YELLOW                    1
4.0-5.0  一般 (IV)           BLUE                      2
< 4.0    none               none                      3
======== ================== ========================= ==========

Bounds follow the plan's wording: "6.0级以上、7.0级以下" includes 6.0 and excludes 7.0. Below
M4.0 the plan gives no grade, so none is claimed (INCIDENT_GRADE_UNSPECIFIED, which the
validator admits). The table is an initial assessment only: a later report by the responsible
agency, with casualties, supersedes it. Densely populated areas (人口密集地区) would move each
threshold one magnitude down; the adapter cannot know population, and takes the less alarming
reading rather than over-grade.
"""

from __future__ import annotations

from dataclasses import dataclass

from yiwang.v1 import envelope_pb2 as pb

#: Published magnitudes have one decimal; this keeps 6.999999 (a float artefact) out of 7.0's row.
_EPSILON = 1e-6


@dataclass(frozen=True, slots=True)
class Grade:
    """What the magnitude says about an event's grade, severity and priority."""

    grade: pb.IncidentGrade
    severity: pb.Severity
    priority: int  # 0 highest .. 3
    name: str  # the Chinese grade name, for attributes and logs


#: Lower magnitude bound -> grade, highest first.
MAGNITUDE_GRADES: tuple[tuple[float, Grade], ...] = (
    (7.0, Grade(pb.GRADE_EXTRAORDINARY, pb.RED, 0, "特别重大")),
    (6.0, Grade(pb.GRADE_MAJOR, pb.ORANGE, 0, "重大")),
    (5.0, Grade(pb.GRADE_LARGER, pb.YELLOW, 1, "较大")),
    (4.0, Grade(pb.GRADE_GENERAL, pb.BLUE, 2, "一般")),
)

UNGRADED = Grade(pb.INCIDENT_GRADE_UNSPECIFIED, pb.SEVERITY_UNSPECIFIED, 3, "")


def grade_of(magnitude: float) -> Grade:
    """The grade the national plan's first assessment gives an earthquake of ``magnitude``."""
    for lower, grade in MAGNITUDE_GRADES:
        if magnitude + _EPSILON >= lower:
            return grade
    return UNGRADED

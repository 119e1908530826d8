"""DescribeRegions and DescribeAvailabilityZones, from ``ebsengine.cloud.scope``'s region
table (every region is ``opt-in-not-required``; a region's zones are ``available`` and
form one network border group named after the region)."""

from __future__ import annotations

from typing import ClassVar

from ebsengine.cloud.scope import REGIONS, zone_id, zones

from ..errors import ApiError
from ..store import Context
from .common import Actions, Extractor, Params, Result, compile_filters

OPT_IN = "opt-in-not-required"


def region_view(name: str) -> Result:
    return {"RegionName": name, "Endpoint": f"ec2.{name}.amazonaws.com", "OptInStatus": OPT_IN}


def zone_view(zone: str, region: str) -> Result:
    return {"ZoneName": zone, "ZoneId": zone_id(zone), "State": "available",
            "RegionName": region, "GroupName": region, "NetworkBorderGroup": region,
            "ZoneType": "availability-zone", "OptInStatus": OPT_IN, "Messages": []}


class RegionActions(Actions):
    ACTIONS: ClassVar[dict[str, str]] = {
        "DescribeRegions": "describe_regions",
        "DescribeAvailabilityZones": "describe_availability_zones",
    }

    _REGION_FILTERS: ClassVar[dict[str, Extractor]] = {
        "endpoint": lambda r: [r["Endpoint"]],
        "region-name": lambda r: [r["RegionName"]],
        "opt-in-status": lambda r: [r["OptInStatus"]],
    }
    _ZONE_FILTERS: ClassVar[dict[str, Extractor]] = {
        "zone-name": lambda z: [z["ZoneName"]],
        "zone-id": lambda z: [z["ZoneId"]],
        "state": lambda z: [z["State"]],
        "region-name": lambda z: [z["RegionName"]],
        "zone-type": lambda z: [z["ZoneType"]],
        "group-name": lambda z: [z["GroupName"]],
        "network-border-group": lambda z: [z["NetworkBorderGroup"]],
        "opt-in-status": lambda z: [z["OptInStatus"]],
        "message": lambda z: [m.get("Message", "") for m in z["Messages"]],
    }

    def describe_regions(self, ctx: Context, p: Params) -> Result:
        match = compile_filters(p.get("Filters"), self._REGION_FILTERS, None)
        names = p.get("RegionNames")
        if names:
            unknown = [n for n in names if n not in REGIONS]
            if unknown:
                raise ApiError("InvalidParameterValue", f"Invalid region names: {unknown[0]}")
        rows = [region_view(r) for r in sorted(REGIONS) if not names or r in names]
        return {"Regions": [r for r in rows if match(r)]}

    def describe_availability_zones(self, ctx: Context, p: Params) -> Result:
        match = compile_filters(p.get("Filters"), self._ZONE_FILTERS, None)
        region = ctx.region
        rows = [zone_view(z, region) for z in zones(region)]
        names, ids = p.get("ZoneNames"), p.get("ZoneIds")
        for wanted, key in ((names, "ZoneName"), (ids, "ZoneId")):
            if wanted:
                known = {r[key] for r in rows}
                unknown = [w for w in wanted if w not in known]
                if unknown:
                    what = "zone" if key == "ZoneName" else "zone ID"
                    raise ApiError("InvalidParameterValue",
                                   f"The {what} '{unknown[0]}' does not exist in {region}.")
        if names or ids:  # named zones: either list selects them
            rows = [r for r in rows if r["ZoneName"] in (names or []) or r["ZoneId"] in (ids or [])]
        return {"AvailabilityZones": [r for r in rows if match(r)]}

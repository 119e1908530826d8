"""DescribeRegions and DescribeAvailabilityZones through boto3 against a real server."""

from __future__ import annotations

from ebsengine.cloud.scope import REGIONS
from test_aws_support import Aws, aws, client, expect_error  # noqa: F401  (fixture)


def test_describe_regions(aws: Aws) -> None:
    with aws.unchanged():
        regions = aws.ec2.describe_regions()["Regions"]
        assert sorted(r["RegionName"] for r in regions) == sorted(REGIONS)
        east = next(r for r in regions if r["RegionName"] == "us-east-1")
        assert east == {"RegionName": "us-east-1", "Endpoint": "ec2.us-east-1.amazonaws.com",
                        "OptInStatus": "opt-in-not-required"}
        assert len(aws.ec2.describe_regions(AllRegions=True)["Regions"]) == len(REGIONS)
        got = aws.ec2.describe_regions(RegionNames=["eu-west-1", "us-west-2"])["Regions"]
        assert [r["RegionName"] for r in got] == ["eu-west-1", "us-west-2"]
        got = aws.ec2.describe_regions(Filters=[{"Name": "endpoint",
                                                 "Values": ["*.eu-central-1.*"]}])["Regions"]
        assert [r["RegionName"] for r in got] == ["eu-central-1"]
        got = aws.ec2.describe_regions(Filters=[{"Name": "region-name", "Values": ["ap-*"]}])
        assert all(r["RegionName"].startswith("ap-") for r in got["Regions"]) and got["Regions"]
        got = aws.ec2.describe_regions(Filters=[{"Name": "opt-in-status",
                                                 "Values": ["opted-in"]}])
        assert got["Regions"] == []
        expect_error(aws.ec2.describe_regions, "InvalidParameterValue", 400,
                     RegionNames=["mars-north-1"])
        expect_error(aws.ec2.describe_regions, "InvalidParameterValue", 400,
                     Filters=[{"Name": "color", "Values": ["x"]}])


def test_describe_availability_zones(aws: Aws) -> None:
    with aws.unchanged():
        zones = aws.ec2.describe_availability_zones()["AvailabilityZones"]
        assert [z["ZoneName"] for z in zones] == [f"us-east-1{c}" for c in "abcdef"]
        a = zones[0]
        assert a["ZoneId"] == "use1-az1" and a["State"] == "available"
        assert (a["RegionName"], a["GroupName"], a["NetworkBorderGroup"]) == ("us-east-1",) * 3
        assert a["ZoneType"] == "availability-zone" and a["OptInStatus"] == "opt-in-not-required"
        west = aws.ec2_west.describe_availability_zones()["AvailabilityZones"]
        assert [z["ZoneId"] for z in west] == ["usw2-az1", "usw2-az2", "usw2-az3", "usw2-az4"]
        # AWS shortens the compound directions to two letters (apse1, apne1), others to one
        for region, short in (("ap-southeast-1", "apse1"), ("ap-northeast-2", "apne2"),
                              ("ap-south-1", "aps1"), ("eu-central-1", "euc1"),
                              ("sa-east-1", "sae1")):
            got = client("ec2", aws.url, region).describe_availability_zones()["AvailabilityZones"]
            assert got[0]["ZoneId"] == f"{short}-az1", region
        got = aws.ec2.describe_availability_zones(ZoneNames=["us-east-1c"])["AvailabilityZones"]
        assert [z["ZoneId"] for z in got] == ["use1-az3"]
        got = aws.ec2.describe_availability_zones(ZoneIds=["use1-az2"])["AvailabilityZones"]
        assert [z["ZoneName"] for z in got] == ["us-east-1b"]
        assert len(aws.ec2.describe_availability_zones(AllAvailabilityZones=True)
                   ["AvailabilityZones"]) == 6

        def names(name: str, *values: str) -> list[str]:
            out = aws.ec2.describe_availability_zones(Filters=[{"Name": name,
                                                               "Values": list(values)}])
            return [z["ZoneName"] for z in out["AvailabilityZones"]]

        assert names("zone-name", "us-east-1a", "us-east-1f") == ["us-east-1a", "us-east-1f"]
        assert names("zone-id", "use1-az4") == ["us-east-1d"]
        assert len(names("state", "available")) == 6 and names("state", "impaired") == []
        assert len(names("region-name", "us-east-1")) == 6
        assert len(names("group-name", "us-east-1")) == 6
        assert names("zone-type", "local-zone") == []
        expect_error(aws.ec2.describe_availability_zones, "InvalidParameterValue", 400,
                     ZoneNames=["us-west-2a"])
        expect_error(aws.ec2.describe_availability_zones, "InvalidParameterValue", 400,
                     ZoneIds=["use1-az9"])

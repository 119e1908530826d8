"""EC2 instance actions: Run/Describe/Start/Stop/Reboot/Terminate, status, attributes,
instance types, console output and CreateImage. Parsing and rendering only; the rules are
``ebsengine.cloud.instances``."""

from __future__ import annotations

from typing import Any, ClassVar

from ebsengine.cloud.instance_types import TYPES, InstanceType
from ebsengine.cloud.instances import STATE_CODES, Transition, private_dns, public_dns
from ebsengine.cloud.model import Instance
from ebsengine.cloud.scope import zone_id, zones

from ..errors import ApiError
from ..store import Context
from .common import (
    Actions,
    Extractor,
    Paginator,
    Params,
    Result,
    _b,
    _iso,
    _tag_list,
    apply_filters,
)


def _state(name: str) -> Result:
    return {"Code": STATE_CODES[name], "Name": name}


def _transitions(items: list[Transition]) -> list[Result]:
    return [{"InstanceId": t.instance_id, "CurrentState": _state(t.current),
             "PreviousState": _state(t.previous)} for t in items]


def _value(p: Params, key: str) -> Any:
    """The ``Value`` of an AttributeValue / AttributeBooleanValue member, else None."""
    v = p.get(key)
    return v.get("Value") if isinstance(v, dict) else None


class InstanceActions(Actions):
    ACTIONS: ClassVar[dict[str, str]] = {
        "RunInstances": "run_instances",
        "DescribeInstances": "describe_instances",
        "DescribeInstanceStatus": "describe_instance_status",
        "StartInstances": "start_instances",
        "StopInstances": "stop_instances",
        "RebootInstances": "reboot_instances",
        "TerminateInstances": "terminate_instances",
        "DescribeInstanceAttribute": "describe_instance_attribute",
        "ModifyInstanceAttribute": "modify_instance_attribute",
        "DescribeInstanceTypes": "describe_instance_types",
        "DescribeInstanceTypeOfferings": "describe_instance_type_offerings",
        "GetConsoleOutput": "get_console_output",
        "CreateImage": "create_image",
    }

    # --- rendering ------------------------------------------------------------------------

    def _groups_of(self, ids: list[str]) -> list[Result]:
        out = []
        for gid in ids:
            g = self.cloud.security_groups.get(gid)
            out.append({"GroupId": gid, "GroupName": g.name if g is not None else ""})
        return out

    def _instance_view(self, ctx: Context, inst: Instance) -> Result:
        c = self.cloud
        region = inst.region
        live = inst.state not in ("shutting-down", "terminated")
        public = c.instances.public_ip(inst) if live else None
        enis = []
        for index, eni in enumerate(c.instances.interfaces(inst)):
            eip = next((a for a in c.addresses.all() if a.network_interface_id == eni.id), None)
            pub = eip.public_ip if eip is not None else eni.public_ip
            assoc = None
            if pub:
                assoc = {"PublicIp": pub, "PublicDnsName": public_dns(pub, region),
                         "IpOwnerId": ctx.account_id if eip is not None else "amazon"}
            att = eni.attachment or {}
            enis.append({
                "NetworkInterfaceId": eni.id, "SubnetId": eni.subnet_id, "VpcId": eni.vpc_id,
                "Description": eni.description, "OwnerId": eni.owner_id, "Status": "in-use",
                "MacAddress": eni.mac_address, "PrivateIpAddress": eni.private_ip,
                "PrivateDnsName": private_dns(eni.private_ip, region),
                "SourceDestCheck": eni.source_dest_check,
                "Groups": self._groups_of(eni.security_group_ids),
                "Attachment": {"AttachmentId": att.get("attachment_id"),
                               "DeviceIndex": att.get("device_index", index),
                               "Status": "attached", "AttachTime": att.get("attach_time"),
                               "DeleteOnTermination": bool(att.get("delete_on_termination")),
                               "NetworkCardIndex": 0},
                "Association": assoc,
                "PrivateIpAddresses": [{"Primary": True, "PrivateIpAddress": eni.private_ip,
                                        "PrivateDnsName": private_dns(eni.private_ip, region),
                                        "Association": assoc}],
                "Ipv6Addresses": [],
                "InterfaceType": eni.interface_type,
            })
        itype = TYPES.get(inst.instance_type)
        return {
            "InstanceId": inst.id,
            "ImageId": inst.image_id,
            "State": _state(inst.state),
            "PrivateDnsName": private_dns(inst.private_ip, region) if live else "",
            "PublicDnsName": public_dns(public, region),
            "StateTransitionReason": inst.state_transition_reason,
            "KeyName": inst.key_name,
            "AmiLaunchIndex": inst.ami_launch_index,
            "ProductCodes": [],
            "InstanceType": inst.instance_type,
            "LaunchTime": inst.launch_time,
            "Placement": {"AvailabilityZone": inst.availability_zone, "GroupName": "",
                          "Tenancy": inst.tenancy,
                          "AvailabilityZoneId": zone_id(inst.availability_zone)},
            "Monitoring": {"State": inst.monitoring},
            "SubnetId": inst.subnet_id if live else None,
            "VpcId": inst.vpc_id if live else None,
            "PrivateIpAddress": inst.private_ip if live else None,
            "PublicIpAddress": public,
            "StateReason": inst.state_reason,
            "Architecture": inst.architecture,
            "RootDeviceType": inst.root_device_type,
            "RootDeviceName": inst.root_device_name,
            "BlockDeviceMappings": [
                {"DeviceName": bd["device"],
                 "Ebs": {"VolumeId": bd["volume_id"], "Status": "attached",
                         "AttachTime": bd.get("attach_time"),
                         "DeleteOnTermination": bool(bd.get("delete_on_termination"))}}
                for bd in inst.block_devices],
            "VirtualizationType": inst.virtualization_type,
            "ClientToken": inst.client_token or "",
            "Tags": _tag_list(inst.tags),
            "SecurityGroups": self._groups_of(inst.security_group_ids) if live else [],
            "SourceDestCheck": True,
            "Hypervisor": "xen",
            "NetworkInterfaces": enis,
            "EbsOptimized": inst.ebs_optimized,
            "EnaSupport": True,
            "CpuOptions": {"CoreCount": itype.cores, "ThreadsPerCore":
                           max(1, itype.vcpus // itype.cores)} if itype else None,
            "HibernationOptions": {"Configured": False},
            "MetadataOptions": {"State": "applied", "HttpTokens": "required",
                                "HttpPutResponseHopLimit": 2, "HttpEndpoint": "enabled"},
            "EnclaveOptions": {"Enabled": False},
            "BootMode": "uefi-preferred",
            "PlatformDetails": "Linux/UNIX",
            "UsageOperation": "RunInstances",
            "CurrentInstanceBootMode": "legacy-bios",
        }

    def _reservations(self, ctx: Context, insts: list[Instance]) -> list[Result]:
        by_res: dict[str, list[Instance]] = {}
        for i in insts:
            by_res.setdefault(i.reservation_id, []).append(i)
        return [{"ReservationId": rid, "OwnerId": ctx.account_id, "Groups": [],
                 "Instances": [self._instance_view(ctx, i) for i in group]}
                for rid, group in by_res.items()]

    # --- actions --------------------------------------------------------------------------

    def run_instances(self, ctx: Context, p: Params) -> Result:
        if not p.get("ImageId"):
            raise ApiError("MissingParameter", "The request must contain the parameter ImageId")
        insts = self.cloud.instances.run(
            self.scope(ctx), image_id=p["ImageId"],
            instance_type=p.get("InstanceType") or "m1.small",
            min_count=p.get("MinCount", 1), max_count=p.get("MaxCount", 1),
            key_name=p.get("KeyName"), security_group_ids=p.get("SecurityGroupIds"),
            security_groups=p.get("SecurityGroups"), subnet_id=p.get("SubnetId"),
            private_ip=p.get("PrivateIpAddress"),
            block_device_mappings=p.get("BlockDeviceMappings"),
            tag_specifications=p.get("TagSpecifications"), user_data=p.get("UserData"),
            placement=p.get("Placement"), network_interfaces=p.get("NetworkInterfaces"),
            disable_api_termination=bool(p.get("DisableApiTermination", False)),
            disable_api_stop=bool(p.get("DisableApiStop", False)),
            instance_initiated_shutdown_behavior=p.get("InstanceInitiatedShutdownBehavior"),
            ebs_optimized=bool(p.get("EbsOptimized", False)),
            monitoring=bool((p.get("Monitoring") or {}).get("Enabled", False)),
            client_token=p.get("ClientToken"))
        (res,) = self._reservations(ctx, insts)
        return res

    _FILTERS: ClassVar[dict[str, Extractor]] = {
        "instance-id": lambda i: [i.id],
        "instance-state-name": lambda i: [i.state],
        "instance-state-code": lambda i: [str(STATE_CODES[i.state])],
        "instance-type": lambda i: [i.instance_type],
        "image-id": lambda i: [i.image_id],
        "key-name": lambda i: [i.key_name] if i.key_name else [],
        "availability-zone": lambda i: [i.availability_zone],
        "placement-availability-zone": lambda i: [i.availability_zone],
        "private-ip-address": lambda i: [i.private_ip] if i.state != "terminated" else [],
        "private-dns-name": lambda i: [private_dns(i.private_ip, i.region)],
        "block-device-mapping.volume-id": lambda i: [b["volume_id"] for b in i.block_devices],
        "block-device-mapping.device-name": lambda i: [b["device"] for b in i.block_devices],
        "block-device-mapping.delete-on-termination":
            lambda i: [_b(bool(b.get("delete_on_termination"))) for b in i.block_devices],
        "root-device-name": lambda i: [i.root_device_name],
        "root-device-type": lambda i: [i.root_device_type],
        "subnet-id": lambda i: [i.subnet_id],
        "vpc-id": lambda i: [i.vpc_id],
        "reservation-id": lambda i: [i.reservation_id],
        "owner-id": lambda i: [i.owner_id],
        "architecture": lambda i: [i.architecture],
        "virtualization-type": lambda i: [i.virtualization_type],
        "hypervisor": lambda i: ["xen"],
        "launch-time": lambda i: [_iso(i.launch_time)],
        "ami-launch-index": lambda i: [str(i.ami_launch_index)],
        "instance.group-id": lambda i: list(i.security_group_ids),
        "network-interface.network-interface-id": lambda i: list(i.network_interface_ids),
        "client-token": lambda i: [i.client_token] if i.client_token else [],
        "monitoring-state": lambda i: [i.monitoring],
        "tenancy": lambda i: [i.tenancy],
    }

    def _filters(self) -> dict[str, Extractor]:
        table = dict(self._FILTERS)
        public = self.cloud.instances.public_ip
        table["ip-address"] = lambda i: [ip] if (ip := public(i)) else []
        table["dns-name"] = lambda i: [public_dns(ip, i.region)] if (ip := public(i)) else []
        table["instance.group-name"] = lambda i: [g["GroupName"] for g in
                                                  self._groups_of(i.security_group_ids)]
        return table

    def describe_instances(self, ctx: Context, p: Params) -> Result:
        ids = p.get("InstanceIds")
        if ids and p.get("MaxResults") is not None:
            raise ApiError("InvalidParameterCombination",
                           "The parameter instancesSet cannot be used with the parameter "
                           "maxResults")
        table = self._filters()
        filters = p.get("Filters")
        apply_filters([], filters, table, None)  # unknown filter names first
        insts = self.cloud.instances.describe(self.scope(ctx), ids or None)
        insts = apply_filters(insts, filters, table, lambda i: i.tags)
        page, token = Paginator("instances", 5, 1000).page(
            insts, lambda i: [i.launch_time, i.ami_launch_index, i.id], p.get("MaxResults"),
            p.get("NextToken"))
        return {"Reservations": self._reservations(ctx, page), "NextToken": token}

    def describe_instance_status(self, ctx: Context, p: Params) -> Result:
        ids = p.get("InstanceIds")
        if ids and p.get("MaxResults") is not None:
            raise ApiError("InvalidParameterCombination",
                           "The parameter instancesSet cannot be used with the parameter "
                           "maxResults")

        def status(i: Instance) -> str:
            return "ok" if i.state == "running" else "not-applicable"

        table: dict[str, Extractor] = {
            "availability-zone": lambda i: [i.availability_zone],
            "instance-state-name": lambda i: [i.state],
            "instance-state-code": lambda i: [str(STATE_CODES[i.state])],
            "instance-status.status": lambda i: [status(i)],
            "system-status.status": lambda i: [status(i)],
            "instance-status.reachability": lambda i: ["passed" if i.state == "running"
                                                       else "not-applicable"],
            "system-status.reachability": lambda i: ["passed" if i.state == "running"
                                                     else "not-applicable"],
            "event.code": lambda i: [],
        }
        filters = p.get("Filters")
        apply_filters([], filters, table, None)
        insts = self.cloud.instances.describe(self.scope(ctx), ids or None)
        if not p.get("IncludeAllInstances"):
            insts = [i for i in insts if i.state == "running"]
        insts = apply_filters(insts, filters, table, None)
        page, token = Paginator("instancestatus", 5, 1000).page(
            insts, lambda i: [i.launch_time, i.ami_launch_index, i.id], p.get("MaxResults"),
            p.get("NextToken"))

        def summary(i: Instance) -> Result:
            if i.state != "running":
                return {"Status": "not-applicable"}
            return {"Status": "ok", "Details": [{"Name": "reachability", "Status": "passed"}]}

        return {"InstanceStatuses": [
            {"InstanceId": i.id, "AvailabilityZone": i.availability_zone,
             "AvailabilityZoneId": zone_id(i.availability_zone),
             "InstanceState": _state(i.state), "InstanceStatus": summary(i),
             "SystemStatus": summary(i), "Events": []}
            for i in page], "NextToken": token}

    def start_instances(self, ctx: Context, p: Params) -> Result:
        out = self.cloud.instances.start(self.scope(ctx), p.get("InstanceIds") or [])
        return {"StartingInstances": _transitions(out)}

    def stop_instances(self, ctx: Context, p: Params) -> Result:
        out = self.cloud.instances.stop(self.scope(ctx), p.get("InstanceIds") or [],
                                        force=bool(p.get("Force", False)))
        return {"StoppingInstances": _transitions(out)}

    def terminate_instances(self, ctx: Context, p: Params) -> Result:
        out = self.cloud.instances.terminate(self.scope(ctx), p.get("InstanceIds") or [])
        return {"TerminatingInstances": _transitions(out)}

    def reboot_instances(self, ctx: Context, p: Params) -> None:
        self.cloud.instances.reboot(self.scope(ctx), p.get("InstanceIds") or [])

    _ATTRIBUTES: ClassVar[dict[str, str]] = {
        "instanceType": "InstanceType", "kernel": "KernelId", "ramdisk": "RamdiskId",
        "userData": "UserData", "disableApiTermination": "DisableApiTermination",
        "instanceInitiatedShutdownBehavior": "InstanceInitiatedShutdownBehavior",
        "rootDeviceName": "RootDeviceName", "blockDeviceMapping": "BlockDeviceMappings",
        "productCodes": "ProductCodes", "sourceDestCheck": "SourceDestCheck",
        "groupSet": "Groups", "ebsOptimized": "EbsOptimized",
        "sriovNetSupport": "SriovNetSupport", "enaSupport": "EnaSupport",
        "enclaveOptions": "EnclaveOptions", "disableApiStop": "DisableApiStop",
    }

    def describe_instance_attribute(self, ctx: Context, p: Params) -> Result:
        attr = p.get("Attribute")
        if attr not in self._ATTRIBUTES:
            raise ApiError("InvalidParameterValue",
                           f"Value ({attr}) for parameter attribute is invalid. Unknown "
                           f"attribute.")
        inst = self.cloud.instances.get(self.scope(ctx), p["InstanceId"])
        enis = self.cloud.instances.interfaces(inst)
        values: dict[str, Any] = {
            "InstanceType": {"Value": inst.instance_type},
            "KernelId": {}, "RamdiskId": {},
            "UserData": {"Value": inst.user_data} if inst.user_data else {},
            "DisableApiTermination": {"Value": inst.disable_api_termination},
            "InstanceInitiatedShutdownBehavior":
                {"Value": inst.instance_initiated_shutdown_behavior},
            "RootDeviceName": {"Value": inst.root_device_name},
            "BlockDeviceMappings": self._instance_view(ctx, inst)["BlockDeviceMappings"],
            "ProductCodes": [],
            "SourceDestCheck": {"Value": enis[0].source_dest_check if enis else True},
            "Groups": self._groups_of(inst.security_group_ids),
            "EbsOptimized": {"Value": inst.ebs_optimized},
            "SriovNetSupport": {}, "EnaSupport": {"Value": True},
            "EnclaveOptions": {"Enabled": False},
            "DisableApiStop": {"Value": inst.disable_api_stop},
        }
        key = self._ATTRIBUTES[attr]
        return {"InstanceId": inst.id, key: values[key]}

    def modify_instance_attribute(self, ctx: Context, p: Params) -> None:
        changes: dict[str, Any] = {
            "instance_type": _value(p, "InstanceType"),
            "disable_api_termination": _value(p, "DisableApiTermination"),
            "disable_api_stop": _value(p, "DisableApiStop"),
            "instance_initiated_shutdown_behavior":
                _value(p, "InstanceInitiatedShutdownBehavior"),
            "ebs_optimized": _value(p, "EbsOptimized"),
            "source_dest_check": _value(p, "SourceDestCheck"),
            "groups": p.get("Groups"),
        }
        ud = p.get("UserData")
        if isinstance(ud, dict) and ud.get("Value") is not None:
            value = ud["Value"]
            changes["user_data"] = value.decode() if isinstance(value, bytes) else str(value)
        attr, value = p.get("Attribute"), p.get("Value")
        if attr is not None:
            simple = {"instanceType": "instance_type", "userData": "user_data",
                      "disableApiTermination": "disable_api_termination",
                      "disableApiStop": "disable_api_stop", "ebsOptimized": "ebs_optimized",
                      "sourceDestCheck": "source_dest_check",
                      "instanceInitiatedShutdownBehavior":
                          "instance_initiated_shutdown_behavior"}
            if attr not in simple or value is None:
                raise ApiError("InvalidParameterValue",
                               f"Value ({attr}) for parameter attribute is invalid.")
            name = simple[attr]
            if name in ("disable_api_termination", "disable_api_stop", "ebs_optimized",
                        "source_dest_check"):
                if value not in ("true", "false"):
                    raise ApiError("InvalidParameterValue",
                                   f"Value ({value}) for parameter value is invalid.")
                changes[name] = value == "true"
            else:
                changes[name] = value
        dot = {}
        for m in p.get("BlockDeviceMappings") or []:
            ebs = m.get("Ebs") or {}
            if "DeleteOnTermination" in ebs:
                dot[m.get("DeviceName")] = bool(ebs["DeleteOnTermination"])
        if dot:
            changes["delete_on_termination"] = dot
        self.cloud.instances.modify_attribute(self.scope(ctx), p["InstanceId"],
                                              **{k: v for k, v in changes.items()
                                                 if v is not None})

    # --- instance types -------------------------------------------------------------------

    @staticmethod
    def _type_view(t: InstanceType) -> Result:
        threads = 1 if t.vcpus == 1 else 2
        return {
            "InstanceType": t.name, "CurrentGeneration": True, "FreeTierEligible": t.free_tier,
            "SupportedUsageClasses": ["on-demand", "spot"], "SupportedRootDeviceTypes": ["ebs"],
            "SupportedVirtualizationTypes": ["hvm"], "BareMetal": False,
            "Hypervisor": t.hypervisor,
            "ProcessorInfo": {"SupportedArchitectures": ["x86_64"] if t.family != "t2"
                              else ["i386", "x86_64"], "Manufacturer": "Intel"},
            "VCpuInfo": {"DefaultVCpus": t.vcpus, "DefaultCores": t.cores,
                         "DefaultThreadsPerCore": threads},
            "MemoryInfo": {"SizeInMiB": t.memory_mib},
            "InstanceStorageSupported": False,
            "EbsInfo": {"EbsOptimizedSupport": "unsupported" if t.family == "t2" else "default",
                        "EncryptionSupport": "supported",
                        "NvmeSupport": "unsupported" if t.family == "t2" else "required"},
            "NetworkInfo": {"NetworkPerformance": "Up to 5 Gigabit" if t.burstable
                            else "Up to 10 Gigabit", "MaximumNetworkInterfaces": 3,
                            "Ipv4AddressesPerInterface": 10, "Ipv6Supported": True,
                            "EnaSupport": "unsupported" if t.family == "t2" else "required"},
            "PlacementGroupInfo": {"SupportedStrategies": ["partition", "spread"]},
            "HibernationSupported": True, "BurstablePerformanceSupported": t.burstable,
            "DedicatedHostsSupported": not t.burstable, "AutoRecoverySupported": True,
            "SupportedBootModes": ["legacy-bios"] if t.family == "t2"
            else ["legacy-bios", "uefi"],
        }

    def describe_instance_types(self, ctx: Context, p: Params) -> Result:
        names = p.get("InstanceTypes")
        if names:
            missing = [n for n in names if n not in TYPES]
            if missing:
                raise ApiError("InvalidInstanceType",
                               f"The following supplied instance types do not exist: "
                               f"[{', '.join(missing)}]")
            types = [TYPES[n] for n in dict.fromkeys(names)]
        else:
            types = list(TYPES.values())
        s = str
        table: dict[str, Extractor] = {
            "instance-type": lambda t: [t.name],
            "vcpu-info.default-vcpus": lambda t: [s(t.vcpus)],
            "vcpu-info.default-cores": lambda t: [s(t.cores)],
            "memory-info.size-in-mib": lambda t: [s(t.memory_mib)],
            "hypervisor": lambda t: [t.hypervisor],
            "burstable-performance-supported": lambda t: [_b(t.burstable)],
            "free-tier-eligible": lambda t: [_b(t.free_tier)],
            "current-generation": lambda t: ["true"],
            "bare-metal": lambda t: ["false"],
            "processor-info.supported-architecture": lambda t: ["x86_64"],
            "supported-root-device-type": lambda t: ["ebs"],
            "supported-virtualization-type": lambda t: ["hvm"],
            "supported-usage-class": lambda t: ["on-demand", "spot"],
        }
        types = apply_filters(types, p.get("Filters"), table, None)
        types.sort(key=lambda t: t.name)
        page, token = Paginator("instancetypes", 5, 100).page(
            types, lambda t: [t.name], p.get("MaxResults"), p.get("NextToken"))
        return {"InstanceTypes": [self._type_view(t) for t in page], "NextToken": token}

    def describe_instance_type_offerings(self, ctx: Context, p: Params) -> Result:
        kind = p.get("LocationType") or "region"
        if kind == "region":
            locations = [ctx.region]
        elif kind == "availability-zone":
            locations = zones(ctx.region)
        elif kind == "availability-zone-id":
            locations = [zone_id(z) for z in zones(ctx.region)]
        else:
            raise ApiError("InvalidParameterValue",
                           f"Value ({kind}) for parameter locationType is invalid.")
        rows = [{"InstanceType": t, "LocationType": kind, "Location": loc}
                for loc in locations for t in TYPES]
        table: dict[str, Extractor] = {
            "instance-type": lambda r: [r["InstanceType"]],
            "location": lambda r: [r["Location"]],
        }
        rows = apply_filters(rows, p.get("Filters"), table, None)
        rows.sort(key=lambda r: (r["Location"], r["InstanceType"]))
        page, token = Paginator("offerings", 5, 1000).page(
            rows, lambda r: [r["Location"], r["InstanceType"]], p.get("MaxResults"),
            p.get("NextToken"))
        return {"InstanceTypeOfferings": page, "NextToken": token}

    def get_console_output(self, ctx: Context, p: Params) -> Result:
        inst = self.cloud.instances.get(self.scope(ctx), p["InstanceId"])
        return {"InstanceId": inst.id, "Timestamp": self.cloud.now(), "Output": ""}

    # --- CreateImage ----------------------------------------------------------------------

    def create_image(self, ctx: Context, p: Params) -> Result:
        img = self.cloud.instances.create_image(
            self.scope(ctx), p["InstanceId"], p["Name"], description=p.get("Description"),
            no_reboot=bool(p.get("NoReboot", False)),
            block_device_mappings=p.get("BlockDeviceMappings"),
            tag_specifications=p.get("TagSpecifications"))
        return {"ImageId": img.id}

"""Data Lifecycle Manager: lifecycle policies that snapshot volumes, instances' volume sets
and AMIs on a schedule, and retire what they made by count or age.

``cloud.dlm`` (a :class:`Lifecycle`) is the library API of the ``dlm`` service and a source
of the cloud's :class:`~.clock.Scheduler`: on the simulated clock a policy runs when the
clock is advanced past its times; on the wall clock ``ebsengine serve`` runs it from a
background thread.

Records (engine service space, every one written in the unit of work it describes):

=================  ==============================  ========================================
namespace          key                             value
=================  ==============================  ========================================
``dlm.policy``     policy id                       the policy (region, account, details...)
``dlm.run``        policy id                       ``{"since": t, "last": {schedule: t}}``:
                                                   the last run of each schedule
``dlm.made``       ``policy/ms/resource/n``        what one run made for one resource:
                                                   snapshot(s) or image, created, expires
=================  ==============================  ========================================

A policy only ever deletes what its own ``dlm.made`` records name (tags a user can copy
prove nothing). A schedule's run is *claimed* first (its last-run time, and the simulated
clock's position, commit before any work), so a crash or restart never repeats a run; each
target is then one unit (its snapshot(s), region records, the made record and the count
retention that follows). On the wall clock a slot missed by more than ``WALL_GRACE``
(the server was down) is skipped: the next due slot runs, nothing is backfilled.
"""

from __future__ import annotations

import functools
import re
import secrets
import time
from typing import TYPE_CHECKING, Any

from ebsengine import errors
from ebsengine.engine import Transaction
from ebsengine.rules import new_id, system_tag_keys

from .clock import is_simulated, persist_clock
from .schedule import (
    VALID_INTERVALS,
    Cron,
    add_retention,
    next_interval_slot,
    parse_time_of_day,
)
from .scope import Scope, put_snapshot_region, region_of_zone, volume_owner
from .tags import spec_tags

if TYPE_CHECKING:
    from .core import Cloud

NS_POLICY = "dlm.policy"
NS_RUN = "dlm.run"
NS_MADE = "dlm.made"
DLM_NAMESPACES = (NS_POLICY, NS_RUN, NS_MADE)
POLICY_TAG = "aws:dlm:lifecycle-policy-id"
SCHEDULE_TAG = "aws:dlm:lifecycle-schedule-name"
#: lifecycle policies per Region (AWS's default quota)
POLICY_QUOTA = 100
#: on the wall clock, a slot older than this when looked at was missed (not backfilled)
WALL_GRACE = 3600.0
MAX_RETAIN = {"DAYS": 36500, "WEEKS": 5200, "MONTHS": 1200, "YEARS": 100}
_UNSUPPORTED_RULES = ("FastRestoreRule", "CrossRegionCopyRules", "ShareRules", "DeprecateRule",
                      "ArchiveRule")
_TEXT_RE = re.compile(r"^[0-9A-Za-z _-]+$")
_ROLE_RE = re.compile(r"^arn:aws(-[a-z]{1,3}){0,2}:iam::\d+:role/.*$")
_TAG_KEY_RE = re.compile(r"^[a-zA-Z0-9+\-=._:/@ ]+$")


def _bad(message: str) -> errors.Ec2Error:
    return errors.Ec2Error("InvalidRequestException", message)


def _not_found(policy_id: str) -> errors.Ec2Error:
    return errors.Ec2Error("ResourceNotFoundException",
                           f"Lifecycle policy with ID {policy_id} not found.")


@functools.lru_cache(maxsize=256)
def _cron(expression: str) -> Cron:
    return Cron(expression)


def policy_arn(pol: dict[str, Any]) -> str:
    return f"arn:aws:dlm:{pol['region']}:{pol['account']}:policy/{pol['id']}"


# --- validation ----------------------------------------------------------------------------


def _tag_list(value: Any, what: str, lo: int, hi: int) -> list[dict[str, str]]:
    if not isinstance(value, list) or not lo <= len(value) <= hi:
        raise _bad(f"{what} must be a list of {lo} to {hi} tags")
    out = []
    for t in value:
        if not isinstance(t, dict) or not isinstance(t.get("Key"), str) or \
                not isinstance(t.get("Value"), str):
            raise _bad(f"each tag of {what} needs a Key and a Value")
        k, v = t["Key"], t["Value"]
        if not 1 <= len(k) <= 128 or len(v) > 256:
            raise _bad(f"tag {k!r} of {what}: keys are 1-128 characters, values up to 256")
        if k.lower().startswith("aws:"):
            raise _bad(f"tag keys starting with 'aws:' are reserved ({what}: {k!r})")
        out.append({"Key": k, "Value": v})
    return out


def check_policy_tags(tags: Any) -> dict[str, str]:
    """A policy's own tags (``TagMap``): 1-200, keys not ``aws:``."""
    if not isinstance(tags, dict) or not 1 <= len(tags) <= 200:
        raise _bad("Tags must map 1 to 200 keys to values")
    for k, v in tags.items():
        if not isinstance(k, str) or not isinstance(v, str) or not 1 <= len(k) <= 128 \
                or len(v) > 256 or not _TAG_KEY_RE.match(k):
            raise _bad(f"invalid tag {k!r}")
        if k.lower().startswith("aws:"):
            raise _bad(f"tag keys starting with 'aws:' are reserved ({k!r})")
    return dict(tags)


def check_description(description: Any) -> str:
    if not isinstance(description, str) or len(description) > 500 or \
            not _TEXT_RE.match(description):
        raise _bad("Description must be 1-500 characters of [0-9A-Za-z _-]")
    return description


def check_role(role: Any) -> str:
    if not isinstance(role, str) or len(role) > 2048 or not _ROLE_RE.match(role):
        raise _bad("ExecutionRoleArn must be an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)")
    return role


def check_state(state: Any) -> str:
    if state not in ("ENABLED", "DISABLED"):
        raise _bad("State must be ENABLED or DISABLED")
    return str(state)


def _check_create_rule(rule: Any, now: float) -> Any:
    if not isinstance(rule, dict):
        raise _bad("each schedule needs a CreateRule")
    rule = dict(rule)
    if rule.get("Location", "CLOUD") != "CLOUD":
        raise _bad("CreateRule.Location: only CLOUD is supported")
    if rule.get("Scripts"):
        raise _bad("CreateRule.Scripts is not supported by ebsengine")
    cron = rule.get("CronExpression")
    has_interval = any(rule.get(k) is not None for k in ("Interval", "IntervalUnit", "Times"))
    if cron is not None:
        if has_interval:
            raise _bad("CreateRule takes either CronExpression or Interval, IntervalUnit and "
                       "Times, not both")
        if not isinstance(cron, str) or not 17 <= len(cron) <= 106:
            raise _bad("CronExpression must be cron(...) of 17-106 characters")
        try:
            _cron(cron).check_interval(now)
        except ValueError as exc:
            raise _bad(f"Invalid CronExpression {cron!r}: {exc}") from None
        return rule
    interval = rule.get("Interval")
    if interval is None:
        raise _bad("CreateRule needs CronExpression, or Interval and IntervalUnit")
    if isinstance(interval, bool) or interval not in VALID_INTERVALS:
        raise _bad(f"CreateRule.Interval must be one of {', '.join(map(str, VALID_INTERVALS))}")
    if rule.get("IntervalUnit") != "HOURS":
        raise _bad("CreateRule.IntervalUnit must be HOURS")
    times = rule.get("Times")
    if times is not None:
        if not isinstance(times, list) or len(times) > 1:
            raise _bad("CreateRule.Times takes one hh:mm time")
        for t in times:
            try:
                parse_time_of_day(t)
            except (ValueError, TypeError):
                raise _bad(f"CreateRule.Times: {t!r} is not hh:mm (UTC)") from None
    return rule


def _check_retain_rule(rule: Any) -> dict[str, Any]:
    if not isinstance(rule, dict):
        raise _bad("each schedule needs a RetainRule")
    count, interval, unit = rule.get("Count"), rule.get("Interval"), rule.get("IntervalUnit")
    if count is not None:
        if interval is not None or unit is not None:
            raise _bad("RetainRule takes either Count or Interval and IntervalUnit, not both")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1000:
            raise _bad("RetainRule.Count must be between 1 and 1000")
        return {"Count": count}
    if interval is None or unit is None:
        raise _bad("RetainRule needs Count, or Interval and IntervalUnit")
    if unit not in MAX_RETAIN:
        raise _bad("RetainRule.IntervalUnit must be DAYS, WEEKS, MONTHS or YEARS")
    if isinstance(interval, bool) or not isinstance(interval, int) or \
            not 1 <= interval <= MAX_RETAIN[unit]:
        raise _bad(f"RetainRule.Interval must be between 1 and {MAX_RETAIN[unit]} {unit} "
                   "(at most 100 years)")
    return {"Interval": interval, "IntervalUnit": unit}


def check_policy_details(details: Any, now: float) -> dict[str, Any]:
    """A normalized copy of ``PolicyDetails`` (custom snapshot and AMI policies), else
    ``InvalidRequestException`` naming what is wrong."""
    if not isinstance(details, dict):
        raise _bad("PolicyDetails is required for a custom policy")
    d = {k: v for k, v in details.items() if v is not None}
    ptype = d.setdefault("PolicyType", "EBS_SNAPSHOT_MANAGEMENT")
    if ptype == "EVENT_BASED_POLICY":
        raise _bad("EVENT_BASED_POLICY (cross-account copy events) is not supported by ebsengine")
    if ptype not in ("EBS_SNAPSHOT_MANAGEMENT", "IMAGE_MANAGEMENT"):
        raise _bad(f"Invalid PolicyType {ptype!r}")
    for k in ("ResourceType", "CreateInterval", "RetainInterval", "CopyTags",
              "CrossRegionCopyTargets", "ExtendDeletion", "Exclusions", "EventSource",
              "Actions"):
        if k in d:
            raise _bad(f"PolicyDetails.{k} belongs to default or event-based policies")
    if d.get("PolicyLanguage", "STANDARD") != "STANDARD":
        raise _bad("PolicyLanguage SIMPLIFIED is for default policies")
    rtypes = d.get("ResourceTypes")
    if not isinstance(rtypes, list) or len(rtypes) != 1 or rtypes[0] not in ("VOLUME", "INSTANCE"):
        raise _bad("ResourceTypes must name one of VOLUME or INSTANCE")
    if ptype == "IMAGE_MANAGEMENT" and rtypes != ["INSTANCE"]:
        raise _bad("IMAGE_MANAGEMENT policies target INSTANCE resources")
    if d.get("ResourceLocations", ["CLOUD"]) != ["CLOUD"]:
        raise _bad("ResourceLocations: only CLOUD is supported")
    d["TargetTags"] = _tag_list(d.get("TargetTags"), "TargetTags", 1, 50)
    params = d.get("Parameters")
    if params is not None:
        if not isinstance(params, dict):
            raise _bad("Parameters must be a structure")
        if ptype == "IMAGE_MANAGEMENT":
            if "ExcludeBootVolume" in params or "ExcludeDataVolumeTags" in params:
                raise _bad("ExcludeBootVolume and ExcludeDataVolumeTags are for snapshot "
                           "policies that target instances")
        else:
            if "NoReboot" in params:
                raise _bad("NoReboot is for AMI (IMAGE_MANAGEMENT) policies")
            if rtypes != ["INSTANCE"] and ("ExcludeBootVolume" in params or
                                           "ExcludeDataVolumeTags" in params):
                raise _bad("ExcludeBootVolume and ExcludeDataVolumeTags are for policies "
                           "that target instances")
        if "ExcludeDataVolumeTags" in params:
            params = dict(params, ExcludeDataVolumeTags=_tag_list(
                params["ExcludeDataVolumeTags"], "ExcludeDataVolumeTags", 0, 50))
        d["Parameters"] = params
    schedules = d.get("Schedules")
    if not isinstance(schedules, list) or not 1 <= len(schedules) <= 4:
        raise _bad("Schedules must hold 1 to 4 schedules")
    names: set[str] = set()
    out = []
    for i, s in enumerate(schedules):
        if not isinstance(s, dict):
            raise _bad("each schedule must be a structure")
        s = {k: v for k, v in s.items() if v is not None}
        for k in _UNSUPPORTED_RULES:
            if k in s:
                raise _bad(f"Schedule.{k} is not supported by ebsengine")
        name = s.setdefault("Name", f"Schedule {i + 1}")
        if not isinstance(name, str) or not 1 <= len(name) <= 120 or not _TEXT_RE.match(name):
            raise _bad("Schedule.Name must be 1-120 characters of [0-9A-Za-z _-]")
        if name in names:
            raise _bad(f"Schedule names must be unique in a policy ({name!r})")
        names.add(name)
        s["CreateRule"] = _check_create_rule(s.get("CreateRule"), now)
        s["RetainRule"] = _check_retain_rule(s.get("RetainRule"))
        if "CopyTags" in s and not isinstance(s["CopyTags"], bool):
            raise _bad("Schedule.CopyTags must be a boolean")
        if "TagsToAdd" in s:
            s["TagsToAdd"] = _tag_list(s["TagsToAdd"], "TagsToAdd", 0, 45)
        if "VariableTags" in s:
            if rtypes != ["INSTANCE"]:
                raise _bad("VariableTags are for policies that target instances")
            s["VariableTags"] = _tag_list(s["VariableTags"], "VariableTags", 0, 45)
            for t in s["VariableTags"]:
                if re.sub(r"\$\((instance-id|timestamp)\)", "", t["Value"]).count("$(") :
                    raise _bad("VariableTags values may use only $(instance-id) and "
                               "$(timestamp)")
        out.append(s)
    d["Schedules"] = out
    return d


def _matches(tags: dict[str, str], target: list[dict[str, str]]) -> bool:
    """A resource is targeted when it carries any of the target tags."""
    return any(tags.get(t["Key"]) == t["Value"] for t in target)


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


# --- the manager ---------------------------------------------------------------------------


class Lifecycle:
    """The library API of lifecycle policies (``cloud.dlm``) and their scheduler source."""

    policy_quota = POLICY_QUOTA

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.engine = cloud.engine

    # --- reading ------------------------------------------------------------------------

    def _policy(self, scope: Scope, policy_id: Any,
                tx: Transaction | None = None) -> dict[str, Any]:
        pol = self.engine.service_get(NS_POLICY, policy_id, tx=tx) \
            if isinstance(policy_id, str) and policy_id else None
        if pol is None or pol["region"] != scope.region or pol["account"] != scope.account_id:
            raise _not_found(str(policy_id))
        return dict(pol)

    def get(self, scope: Scope, policy_id: str) -> dict[str, Any]:
        """GetLifecyclePolicy: the ``LifecyclePolicy`` structure (botocore member names)."""
        return self.view(self._policy(scope, policy_id))

    def policies(self, scope: Scope) -> list[dict[str, Any]]:
        """Every policy record of the scope's region, in id order."""
        return [dict(v) for _, v in self.engine.service_items(NS_POLICY)
                if v["region"] == scope.region and v["account"] == scope.account_id]

    @staticmethod
    def state_of(pol: dict[str, Any]) -> str:
        return "ERROR" if pol["state"] == "ENABLED" and pol.get("error") else str(pol["state"])

    def view(self, pol: dict[str, Any]) -> dict[str, Any]:
        state = self.state_of(pol)
        return {"PolicyId": pol["id"], "Description": pol["description"], "State": state,
                "StatusMessage": pol.get("error") or state,
                "ExecutionRoleArn": pol["role"], "DateCreated": pol["created"],
                "DateModified": pol["modified"], "PolicyDetails": pol["details"],
                "Tags": pol.get("tags") or None, "PolicyArn": policy_arn(pol),
                "DefaultPolicy": False}

    def summary(self, pol: dict[str, Any]) -> dict[str, Any]:
        return {"PolicyId": pol["id"], "Description": pol["description"],
                "State": self.state_of(pol), "Tags": pol.get("tags") or None,
                "PolicyType": pol["details"]["PolicyType"], "DefaultPolicy": False}

    def describe(self, scope: Scope, *, policy_ids: list[str] | None = None,
             state: str | None = None, resource_types: list[str] | None = None,
             target_tags: list[str] | None = None, tags_to_add: list[str] | None = None,
             default_policy_type: str | None = None) -> list[dict[str, Any]]:
        """GetLifecyclePolicies: summaries of the policies matching every filter given
        (``target_tags``/``tags_to_add`` as ``key=value``). An id in ``policy_ids`` that
        does not exist is ``ResourceNotFoundException``."""
        pols = self.policies(scope)
        if default_policy_type is not None:
            return []  # no default policies (yet)
        if policy_ids:
            known = {p["id"] for p in pols}
            missing = [i for i in policy_ids if i not in known]
            if missing:
                raise errors.Ec2Error("ResourceNotFoundException",
                                      f"Lifecycle policies not found: {', '.join(missing)}")
            pols = [p for p in pols if p["id"] in set(policy_ids)]
        if state is not None:
            pols = [p for p in pols if self.state_of(p) == state]
        if resource_types:
            pols = [p for p in pols if set(p["details"]["ResourceTypes"]) & set(resource_types)]

        def pairs(values: list[str]) -> set[tuple[str, str]]:
            out = set()
            for v in values:
                if "=" not in v:
                    raise _bad(f"tag filters are key=value, not {v!r}")
                k, _, val = v.partition("=")
                out.add((k, val))
            return out

        if target_tags:
            want = pairs(target_tags)
            pols = [p for p in pols if want & {(t["Key"], t["Value"])
                                               for t in p["details"]["TargetTags"]}]
        if tags_to_add:
            want = pairs(tags_to_add)
            pols = [p for p in pols if want & {(t["Key"], t["Value"]) for s in
                                               p["details"]["Schedules"]
                                               for t in s.get("TagsToAdd", [])}]
        return [self.summary(p) for p in pols]

    def made(self, policy_id: str) -> list[dict[str, Any]]:
        """What the policy made and still manages, oldest first: ``{"kind": "snapshot" |
        "set" | "image", "resource", "schedule", "snapshots", "image", "created",
        "expires"}``."""
        return [dict(v, key=k) for k, v in self.engine.service_items(NS_MADE, policy_id + "/")]

    # --- writing ------------------------------------------------------------------------

    def create(self, scope: Scope, *, execution_role_arn: str, description: str, state: str,
               policy_details: dict[str, Any] | None = None, tags: dict[str, str] | None = None,
               default_policy: str | None = None) -> str:
        """CreateLifecyclePolicy; returns the new policy id."""
        if default_policy is not None:
            raise _bad("default policies are not supported by ebsengine yet")
        now = self.cloud.now()
        pol: dict[str, Any] = {"id": new_id("policy"), "region": scope.region,
               "account": scope.account_id,
               "role": check_role(execution_role_arn),
               "description": check_description(description), "state": check_state(state),
               "error": None, "details": check_policy_details(policy_details, now),
               "tags": check_policy_tags(tags) if tags is not None else {},
               "created": now, "modified": now}
        with self.engine.transaction() as tx:
            n = sum(1 for _, v in self.engine.service_items(NS_POLICY, tx=tx)
                    if v["region"] == scope.region and v["account"] == scope.account_id)
            if n >= self.policy_quota:
                raise errors.Ec2Error("LimitExceededException",
                                      f"At most {self.policy_quota} lifecycle policies per "
                                      "Region")
            self.engine.service_put(NS_POLICY, pol["id"], pol, tx=tx)
            self.engine.service_put(NS_RUN, pol["id"], {"since": now, "last": {}}, tx=tx)
        return str(pol["id"])

    def update(self, scope: Scope, policy_id: str, *, execution_role_arn: str | None = None,
               state: str | None = None, description: str | None = None,
               policy_details: dict[str, Any] | None = None, **default_only: Any) -> None:
        """UpdateLifecyclePolicy. The policy and resource types cannot change. Enabling a
        disabled policy, or adding a schedule, starts it from now (nothing is backfilled)."""
        if any(v is not None for v in default_only.values()):
            raise _bad(f"{', '.join(k for k, v in default_only.items() if v is not None)} "
                       "belong to default policies")
        now = self.cloud.now()
        role = check_role(execution_role_arn) if execution_role_arn is not None else None
        new_state = check_state(state) if state is not None else None
        desc = check_description(description) if description is not None else None
        details = check_policy_details(policy_details, now) if policy_details is not None else None
        with self.engine.transaction() as tx:
            pol = self._policy(scope, policy_id, tx)
            if details is not None:
                old = pol["details"]
                if details["PolicyType"] != old["PolicyType"] or \
                        details["ResourceTypes"] != old["ResourceTypes"]:
                    raise _bad("The policy type and resource type of a policy cannot change")
            runs = self.engine.service_get(NS_RUN, pol["id"], tx=tx) or {"since": now, "last": {}}
            last = dict(runs.get("last") or {})
            if new_state == "ENABLED" and pol["state"] != "ENABLED":
                runs, last = {"since": now}, {}
            if details is not None:
                names = {s["Name"] for s in details["Schedules"]}
                last = {k: v for k, v in last.items() if k in names}
                for s in details["Schedules"]:
                    if s["Name"] not in {x["Name"] for x in pol["details"]["Schedules"]}:
                        last[s["Name"]] = max(now, float(runs.get("since", now)))
                pol["details"] = details
            if role is not None:
                pol["role"] = role
            if new_state is not None:
                pol["state"] = new_state
            if desc is not None:
                pol["description"] = desc
            pol["error"] = None
            pol["modified"] = now
            self.engine.service_put(NS_POLICY, pol["id"], pol, tx=tx)
            self.engine.service_put(NS_RUN, pol["id"], dict(runs, last=last), tx=tx)

    def delete(self, scope: Scope, policy_id: str) -> None:
        """DeleteLifecyclePolicy: the policy stops; what it made stays (untracked)."""
        with self.engine.transaction() as tx:
            pol = self._policy(scope, policy_id, tx)
            self.engine.service_put(NS_POLICY, pol["id"], None, tx=tx)
            self.engine.service_put(NS_RUN, pol["id"], None, tx=tx)
            for key, _ in self.engine.service_items(NS_MADE, pol["id"] + "/", tx=tx):
                self.engine.service_put(NS_MADE, key, None, tx=tx)

    # --- policy tags (by ARN) -------------------------------------------------------------

    def _by_arn(self, arn: str, tx: Transaction | None = None,
                scope: Scope | None = None) -> dict[str, Any]:
        """The policy an ARN names; with ``scope`` (the endpoint's region and account) an ARN
        of another region or account is not found, as AWS's regional endpoints answer."""
        m = re.fullmatch(r"arn:aws(?:-[a-z]{1,3}){0,2}:dlm:([A-Za-z0-9_/.-]{0,63}):(\d+):"
                         r"policy/([0-9A-Za-z_-]{1,128})", arn or "")
        if not m:
            raise _bad(f"Invalid resource ARN {arn!r}")
        if scope is not None and (m.group(1), m.group(2)) != (scope.region, scope.account_id):
            raise _not_found(m.group(3))
        return self._policy(Scope(m.group(1), m.group(2)), m.group(3), tx)

    def tags_of(self, arn: str, scope: Scope | None = None) -> dict[str, str]:
        return dict(self._by_arn(arn, scope=scope).get("tags") or {})

    def tag(self, arn: str, tags: dict[str, str], scope: Scope | None = None) -> None:
        new = check_policy_tags(tags)
        with self.engine.transaction() as tx:
            pol = self._by_arn(arn, tx, scope)
            merged = check_policy_tags({**(pol.get("tags") or {}), **new})
            self.engine.service_put(NS_POLICY, pol["id"], dict(pol, tags=merged), tx=tx)

    def untag(self, arn: str, keys: list[str], scope: Scope | None = None) -> None:
        if not isinstance(keys, list) or not 1 <= len(keys) <= 200:
            raise _bad("TagKeys must list 1 to 200 keys")
        with self.engine.transaction() as tx:
            pol = self._by_arn(arn, tx, scope)
            left = {k: v for k, v in (pol.get("tags") or {}).items() if k not in set(keys)}
            self.engine.service_put(NS_POLICY, pol["id"], dict(pol, tags=left), tx=tx)

    # --- scheduling -----------------------------------------------------------------------

    def _floor(self, runs: dict[str, Any], name: str) -> float:
        floor = float((runs.get("last") or {}).get(name, runs.get("since", 0.0)))
        if not is_simulated(self.cloud.clock):
            floor = max(floor, self.cloud.now() - WALL_GRACE)
        return floor

    @staticmethod
    def next_slot(schedule: dict[str, Any], after: float) -> float | None:
        """The schedule's first creation time strictly after ``after``."""
        rule = schedule["CreateRule"]
        if rule.get("CronExpression"):
            return _cron(rule["CronExpression"]).next_after(after)
        times = rule.get("Times") or ["00:00"]
        return next_interval_slot(after, int(rule["Interval"]), parse_time_of_day(times[0]))

    def _enabled(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        out = []
        for pid, pol in self.engine.service_items(NS_POLICY):
            if pol["state"] == "ENABLED":
                out.append((pol, self.engine.service_get(NS_RUN, pid) or {"since": pol["created"]}))
        return out

    def next_due(self) -> float | None:
        best: float | None = None
        enabled = set()
        for pol, runs in self._enabled():
            enabled.add(pol["id"])
            for s in pol["details"]["Schedules"]:
                t = self.next_slot(s, self._floor(runs, s["Name"]))
                if t is not None and (best is None or t < best):
                    best = t
        for _, rec in self.engine.service_items(NS_MADE):
            exp = rec.get("expires")
            if exp is not None and rec["policy"] in enabled and (best is None or exp < best):
                best = float(exp)
        return best

    def run(self, at: float) -> None:
        """Run every enabled policy's schedules due at or before ``at``, then retire what
        is past its age."""
        for pol, runs in self._enabled():
            for s in pol["details"]["Schedules"]:
                t = self.next_slot(s, self._floor(runs, s["Name"]))
                if t is not None and t <= at:
                    self.run_schedule(pol["id"], s["Name"], t)
            try:
                self._expire(pol["id"], at)
            except errors.EbsError as exc:
                self._set_error(pol["id"], f"retention: {exc.message or exc}"[:500])

    def run_schedule(self, policy_id: str, schedule_name: str, at: float) -> list[str]:
        """One run of one schedule at time ``at``: claim it, then make and retain per target.
        Returns the failures (empty: the policy leaves ERROR). A run already claimed for
        ``at`` or later does nothing."""
        eng = self.engine
        with eng.transaction() as tx:
            pol = eng.service_get(NS_POLICY, policy_id, tx=tx)
            if pol is None or pol["state"] != "ENABLED":
                return []
            runs = eng.service_get(NS_RUN, policy_id, tx=tx) or {"since": pol["created"]}
            last = dict(runs.get("last") or {})
            if float(last.get(schedule_name, -1.0)) >= at:
                return []
            last[schedule_name] = at
            eng.service_put(NS_RUN, policy_id, dict(runs, last=last), tx=tx)
            persist_clock(self.cloud.clock, tx)
        sched = next(s for s in pol["details"]["Schedules"] if s["Name"] == schedule_name)
        scope = Scope(pol["region"], pol["account"])
        failures: list[str] = []
        for rid, work in self._targets(pol, sched, scope, at):
            try:
                work()
            except errors.EbsError as exc:
                failures.append(f"{rid}: {exc.message or exc}")
        self._set_error(policy_id, "; ".join(failures)[:500] or None)
        return failures

    def _set_error(self, policy_id: str, error: str | None) -> None:
        with self.engine.transaction() as tx:
            pol = self.engine.service_get(NS_POLICY, policy_id, tx=tx)
            if pol is not None and pol.get("error") != error:
                self.engine.service_put(NS_POLICY, policy_id, dict(pol, error=error), tx=tx)

    # --- what one run makes -----------------------------------------------------------------

    def _tags(self, pol: dict[str, Any], sched: dict[str, Any], source: dict[str, str],
              instance_id: str | None, at: float) -> dict[str, str]:
        out: dict[str, str] = {}
        if sched.get("CopyTags"):
            out.update({k: v for k, v in source.items() if not k.lower().startswith("aws:")})
        for t in sched.get("TagsToAdd") or []:
            out[t["Key"]] = t["Value"]
        for t in sched.get("VariableTags") or []:
            out[t["Key"]] = t["Value"].replace("$(instance-id)", instance_id or "") \
                .replace("$(timestamp)", _stamp(at))
        out[POLICY_TAG] = pol["id"]
        out[SCHEDULE_TAG] = sched["Name"]
        return out

    @staticmethod
    def _description(pol: dict[str, Any], sched: dict[str, Any]) -> str:
        return f"Created for policy: {pol['id']} schedule: {sched['Name']}"

    def _targets(self, pol: dict[str, Any], sched: dict[str, Any], scope: Scope,
                 at: float) -> list[tuple[str, Any]]:
        d = pol["details"]
        target = d["TargetTags"]
        if d["ResourceTypes"] == ["VOLUME"]:
            vols = [v for v in self.engine.list_volumes()
                    if region_of_zone(v.availability_zone) == pol["region"] and
                    _matches(v.tags, target) and
                    volume_owner(self.engine, v.id) == pol["account"]]
            return [(v.id, functools.partial(self._snapshot_volume, pol, sched, v.id, at))
                    for v in sorted(vols, key=lambda v: v.id)]
        out = []
        for inst in self.cloud.instance_table.in_region(pol["region"]):
            inst = self.cloud.instances.settled(inst)
            if inst.owner_id != pol["account"] or inst.state not in ("running", "stopped") or \
                    not _matches(inst.tags, target):
                continue
            if d["PolicyType"] == "IMAGE_MANAGEMENT":
                out.append((inst.id, functools.partial(self._image_instance, pol, sched, scope,
                                                       inst.id, at)))
            else:
                out.append((inst.id, functools.partial(self._snapshot_instance, pol, sched,
                                                       inst.id, at)))
        return out

    def _record(self, tx: Transaction, pol: dict[str, Any], sched: dict[str, Any], resource: str,
                kind: str, at: float, snapshots: list[str], image: str | None = None) -> None:
        rule = sched["RetainRule"]
        expires = add_retention(at, rule["Interval"], rule["IntervalUnit"]) \
            if "Interval" in rule else None
        key = f"{pol['id']}/{round(at * 1000):015d}/{resource}/{secrets.token_hex(4)}"
        self.engine.service_put(NS_MADE, key, {
            "policy": pol["id"], "schedule": sched["Name"], "resource": resource, "kind": kind,
            "region": pol["region"], "account": pol["account"], "snapshots": snapshots,
            "image": image, "created": at, "expires": expires}, tx=tx)

    def _over_count(self, pol: dict[str, Any], sched: dict[str, Any], resource: str,
                    tx: Transaction | None = None) -> list[tuple[str, dict[str, Any]]]:
        count = sched["RetainRule"].get("Count")
        if count is None:
            return []
        mine = [(k, v) for k, v in self.engine.service_items(NS_MADE, pol["id"] + "/", tx=tx)
                if v["schedule"] == sched["Name"] and v["resource"] == resource]
        # what the user deleted does not count (its record goes, deleting nothing)
        gone = [(k, v) for k, v in mine if not self._still_there(v, tx)]
        live = [(k, v) for k, v in mine if (k, v) not in gone]
        return gone + live[:max(0, len(live) - int(count))]

    def _still_there(self, rec: dict[str, Any], tx: Transaction | None) -> bool:
        """Whether anything a made record names still exists (its AMI, else a snapshot)."""
        if rec.get("image"):
            img = self.cloud.image_table.get(rec["image"], tx=tx)
            return img is not None and img.state not in ("deregistered", "failed")
        for sid in rec["snapshots"]:
            try:
                self.engine.get_snapshot(sid, tx=tx)
                return True
            except errors.NotFound:
                continue
        return False

    def _snapshot_volume(self, pol: dict[str, Any], sched: dict[str, Any], vid: str,
                         at: float) -> None:
        eng = self.engine
        with system_tag_keys(POLICY_TAG, SCHEDULE_TAG), eng.transaction(flush=[vid]) as tx:
            vol = eng.get_volume(vid, tx=tx)
            snap = eng.create_snapshot(vid, description=self._description(pol, sched),
                                       tags=self._tags(pol, sched, vol.tags, None, at), tx=tx)
            put_snapshot_region(eng, tx, snap.id, pol["region"], pol["account"])
            self._record(tx, pol, sched, vid, "snapshot", at, [snap.id])
            for key, rec in self._over_count(pol, sched, vid, tx):
                self._discard_snapshots(key, rec, tx)
            persist_clock(self.cloud.clock, tx)

    def _snapshot_instance(self, pol: dict[str, Any], sched: dict[str, Any], iid: str,
                           at: float) -> None:
        """One crash-consistent set: every chosen volume of the instance in one unit."""
        eng = self.engine
        c = self.cloud
        params = pol["details"].get("Parameters") or {}
        inst = c.instance_table.get(iid)
        if inst is None:
            return
        all_vids = [bd["volume_id"] for bd in inst.block_devices]
        with system_tag_keys(POLICY_TAG, SCHEDULE_TAG), eng.transaction(flush=all_vids) as tx:
            inst = c.instance_table.get(iid, tx=tx)
            if inst is None or [bd["volume_id"] for bd in inst.block_devices] != all_vids:
                raise errors.IncorrectState(f"the volumes of {iid} changed during the run")
            tags = self._tags(pol, sched, inst.tags, iid, at)
            chosen = []
            for bd in inst.block_devices:
                boot = bd["device"] == inst.root_device_name
                if boot and params.get("ExcludeBootVolume"):
                    continue
                vol = eng.get_volume(bd["volume_id"], tx=tx)
                if not boot and _matches(vol.tags, params.get("ExcludeDataVolumeTags") or []):
                    continue
                chosen.append(vol.id)
            if not chosen:
                return
            snaps = []
            for vid in chosen:
                snap = eng.create_snapshot(vid, description=self._description(pol, sched),
                                           tags=tags, tx=tx)
                put_snapshot_region(eng, tx, snap.id, pol["region"], pol["account"])
                snaps.append(snap.id)
            self._record(tx, pol, sched, iid, "set", at, snaps)
            for key, rec in self._over_count(pol, sched, iid, tx):
                self._discard_snapshots(key, rec, tx)
            persist_clock(c.clock, tx)

    def _image_instance(self, pol: dict[str, Any], sched: dict[str, Any], scope: Scope,
                        iid: str, at: float) -> None:
        """CreateImage (NoReboot, default true) of the instance, then its record; retention
        deregisters the AMIs past the count and deletes their snapshots."""
        c = self.cloud
        params = pol["details"].get("Parameters") or {}
        inst = c.instance_table.get(iid)
        if inst is None:
            return
        name = f"dlm-{pol['id']}-{iid}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(at))}"
        tags = self._tags(pol, sched, inst.tags, iid, at)
        tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
        specs = [{"ResourceType": "image", "Tags": tag_list},
                 {"ResourceType": "snapshot", "Tags": tag_list}]
        with system_tag_keys(POLICY_TAG, SCHEDULE_TAG):
            spec_tags(specs, "image", ("image", "snapshot"))  # refuse before making anything
            try:
                img = c.instances.create_image(scope, iid, name,
                                               description=self._description(pol, sched),
                                               no_reboot=bool(params.get("NoReboot", True)),
                                               tag_specifications=specs)
                image_id = str(img.id)
                snaps = [str(m["Ebs"]["SnapshotId"]) for m in img.block_device_mappings
                         if (m.get("Ebs") or {}).get("SnapshotId")]
            except errors.Ec2Error as exc:
                # a run interrupted after its image: adopt the image it made (same name)
                if exc.code != "InvalidAMIName.Duplicate":
                    raise
                same = [i for i in c.image_table.in_region(pol["region"])
                        if i.name == name and i.tags.get(POLICY_TAG) == pol["id"]]
                if not same:
                    raise
                image_id = str(same[0].id)
                snaps = [str(m["Ebs"]["SnapshotId"]) for m in same[0].block_device_mappings
                         if (m.get("Ebs") or {}).get("SnapshotId")]
                if any(v.get("image") == image_id for _, v in
                       self.engine.service_items(NS_MADE, pol["id"] + "/")):
                    return
        with self.engine.transaction() as tx:
            self._record(tx, pol, sched, iid, "image", at, snaps, image_id)
            persist_clock(c.clock, tx)
        for key, rec in self._over_count(pol, sched, iid):
            self._discard_image(key, rec)

    # --- retiring -------------------------------------------------------------------------

    def _discard_snapshots(self, key: str, rec: dict[str, Any], tx: Transaction) -> None:
        """Delete the snapshots one made record names (those still there and not used by an
        image), and the record."""
        eng = self.engine
        kept = []
        for sid in rec["snapshots"]:
            try:
                eng.get_snapshot(sid, tx=tx)
            except errors.NotFound:
                continue  # deleted by someone else
            if self.cloud.images.snapshot_in_use(None, sid, tx) is not None:
                kept.append(sid)
                continue
            eng.delete_snapshot(sid, tx=tx)
            self.cloud.images.forget_snapshot(tx, sid)
        if kept:  # an AMI uses it: AWS's DeleteSnapshot refuses too; try again later
            eng.service_put(NS_MADE, key, dict(rec, snapshots=kept), tx=tx)
        else:
            eng.service_put(NS_MADE, key, None, tx=tx)

    def _discard_image(self, key: str, rec: dict[str, Any]) -> None:
        scope = Scope(rec["region"], rec["account"])
        img = self.cloud.image_table.get(rec["image"])
        if img is not None and img.state not in ("deregistered", "failed"):
            self.cloud.images.deregister(scope, rec["image"], delete_associated_snapshots=True)
        with self.engine.transaction() as tx:
            self.engine.service_put(NS_MADE, key, None, tx=tx)

    def _next_run(self, policy_id: str, at: float, tx: Transaction) -> float | None:
        """The policy's first creation time after ``at`` (when a kept record is looked at
        again), or None."""
        pol = self.engine.service_get(NS_POLICY, policy_id, tx=tx)
        times = [t for t in (self.next_slot(s, at) for s in
                             (pol or {}).get("details", {}).get("Schedules", []))
                 if t is not None]
        return min(times) if times else None

    def _expire(self, policy_id: str, at: float) -> None:
        for key, rec in self.engine.service_items(NS_MADE, policy_id + "/"):
            exp = rec.get("expires")
            if exp is None or float(exp) > at:
                continue
            if rec["kind"] == "image":
                self._discard_image(key, rec)
            else:
                with self.engine.transaction() as tx:
                    self._discard_snapshots(key, rec, tx)
                    if not self.engine.service_get(NS_MADE, key, tx=tx):
                        persist_clock(self.cloud.clock, tx)
                    else:  # kept (in use): look again at the next run, not in a loop
                        self.engine.service_put(NS_MADE, key, dict(
                            self.engine.service_get(NS_MADE, key, tx=tx),
                            expires=self._next_run(policy_id, at, tx)), tx=tx)


__all__ = ["DLM_NAMESPACES", "NS_MADE", "NS_POLICY", "NS_RUN", "POLICY_TAG", "SCHEDULE_TAG",
           "Lifecycle", "check_policy_details", "policy_arn"]

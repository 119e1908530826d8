"""CreateTags, DeleteTags and DescribeTags over every taggable resource."""

from __future__ import annotations

from typing import ClassVar

from ebsengine.rules import check_tag_key, check_tags

from ..store import Context
from .common import (
    Actions,
    Extractor,
    Paginator,
    Params,
    Result,
    compile_filters,
)


class TagActions(Actions):
    ACTIONS: ClassVar[dict[str, str]] = {
        "CreateTags": "create_tags",
        "DeleteTags": "delete_tags",
        "DescribeTags": "describe_tags",
    }

    # --- tags --------------------------------------------------------------------------

    def create_tags(self, ctx: Context, p: Params) -> None:
        new = check_tags({t.get("Key", ""): t.get("Value", "") for t in p["Tags"]})
        self.cloud.tags.set(self.scope(ctx), p["Resources"], new)  # every resource or none

    def delete_tags(self, ctx: Context, p: Params) -> None:
        tags = p.get("Tags")
        for t in tags or []:
            check_tag_key(t.get("Key", ""))
        spec = None if tags is None else {t.get("Key", ""): t.get("Value") for t in tags}
        self.cloud.tags.delete(self.scope(ctx), p["Resources"], spec)

    def describe_tags(self, ctx: Context, p: Params) -> Result:
        table: dict[str, Extractor] = {
            "resource-id": lambda r: [r["ResourceId"]],
            "resource-type": lambda r: [r["ResourceType"]],
            "key": lambda r: [r["Key"]],
            "value": lambda r: [r["Value"]],
        }
        match = compile_filters(p.get("Filters"), table, lambda r: {r["Key"]: r["Value"]})
        rows = [r for r in self.cloud.tags.rows(self.scope(ctx)) if match(r)]
        page, token = Paginator("tags", 5, 1000).page(
            rows, lambda r: [r["ResourceId"], r["Key"]], p.get("MaxResults"), p.get("NextToken"))
        return {"Tags": page, "NextToken": token}

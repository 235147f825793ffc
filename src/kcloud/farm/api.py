"""The admin API under `/api/v1`: deployments, placement explain, devices (drain), events.

Handlers are thin: each calls one `ControlPlaneService` method (one transaction), then wakes the
reconciler so the change takes effect at once rather than at the next tick. Refusals are
`kcloud.errors.KcloudError`s (the control plane's, or tenancy's quota) raised straight through:
the gateway's one handler answers them as `{"error": "..."}` with their status; nothing is
written when a request is refused.

Who may do what, when tenancy is attached (no tenancy: everything, as the operator):
a tenant's key sees and changes only its own deployments (anything else is 404), creates
deployments owned by its tenant, and reads devices; read-only keys change nothing (403);
draining devices is for admins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from fastapi import APIRouter, HTTPException, Query, Response

from kcloud.errors import ForbiddenError
from kcloud.farm.bounds import INTEGER_MAX
from kcloud.farm.names import resolve
from kcloud.farm.service import ControlPlaneService, NotFoundError
from kcloud.farm.spec import (
    DeploymentCreate,
    DeploymentUpdate,
    DeploymentView,
    DeviceView,
    DrainRequest,
    EventView,
    ExplainView,
    RoutingView,
    ScaleRequest,
)

PREFIX = "/api/v1"
#: Every route's refusals (the gateway adds the `{"error": ...}` body to each in the OpenAPI document).
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "malformed request (e.g. replicas < 0)"},
    403: {"description": "a read-only key, a tenant key on another tenant's behalf or on devices, "
                         "or over the tenant's quota"},
    404: {"description": "no such deployment, device or model"},
    409: {"description": "a deployment of that name exists; a count set by hand on an autoscaled one"},
    422: {"description": "constraints that contradict the catalog or the model; an autoscale policy "
                         "the model or the server cannot follow"},
}


class Caller(Protocol):
    """Who is asking, as the admin API needs to know it. Tenancy's principal is one; without
    tenancy there is no caller (`None`) and every request acts for the operator."""

    @property
    def farm_wide(self) -> bool: ...  # an admin or a farm-wide read-only key
    @property
    def can_change(self) -> bool: ...  # may create, scale, update and delete
    @property
    def is_admin(self) -> bool: ...
    @property
    def tenant_name(self) -> str | None: ...


def build_api(
    service: ControlPlaneService,
    wake: Callable[[], None] = lambda: None,
    *,
    caller: Callable[[], Caller | None] = lambda: None,
    audit: Callable[..., None] = lambda action, target, **detail: None,
    routing: Callable[[str], dict[str, object] | None] = lambda name: None,
) -> APIRouter:
    """The admin API on `service`. `caller()` tells who the current request acts for, and
    `audit(action, target, **detail)` names its action in the audit log: both come from tenancy,
    which sits above this package, through the composition root (`kcloud.app`)."""
    api = APIRouter(prefix=PREFIX, tags=["control plane"], responses=_ERRORS)

    def visible(name: str) -> str:
        """The served name `name` means to the caller (a tenant's bare names are in its name space),
        or 404 for a deployment the caller's tenant does not own (as if it did not exist)."""
        principal = caller()
        if principal is None or principal.farm_wide:
            return name
        for candidate in dict.fromkeys((resolve(principal.tenant_name, name), name)):
            try:
                if service.owner(candidate) == principal.tenant_name:
                    return candidate
            except NotFoundError:
                pass
        raise HTTPException(404, f"deployment {name!r} not found")

    def may_change() -> None:
        principal = caller()
        if principal is not None and not principal.can_change:
            raise ForbiddenError("this key is read-only; it cannot change deployments")

    def admin_only(what: str) -> None:
        principal = caller()
        if principal is not None and not principal.is_admin:
            raise ForbiddenError(f"only an admin key may {what}")

    @api.get("/deployments", response_model=list[DeploymentView], summary="List deployments")
    def list_deployments() -> list[DeploymentView]:
        principal = caller()
        if principal is None or principal.farm_wide:
            return service.list_deployments()
        return service.list_deployments(principal.tenant_name, all_tenants=False)

    @api.post(
        "/deployments",
        response_model=DeploymentView,
        status_code=201,
        summary="Create a deployment; it is placed at once (pending, with the reason, if nothing fits)",
    )
    def create_deployment(spec: DeploymentCreate) -> DeploymentView:
        may_change()
        principal = caller()
        if principal is not None and not principal.farm_wide:
            if spec.tenant not in (None, principal.tenant_name):
                raise ForbiddenError("a tenant key creates deployments for its own tenant only")
            spec = spec.model_copy(update={"tenant": principal.tenant_name})
        view = service.create(spec)
        audit("deployment.create", view.name, replicas=spec.replicas, model=spec.model)
        wake()
        return view

    @api.get("/deployments/{name}", response_model=DeploymentView, summary="One deployment and its replicas")
    def get_deployment(name: str) -> DeploymentView:
        name = visible(name)
        return service.get(name)

    @api.patch(
        "/deployments/{name}",
        response_model=DeploymentView,
        summary="Change version, replicas, constraints, SLO or policy",
    )
    def update_deployment(name: str, patch: DeploymentUpdate) -> DeploymentView:
        name = visible(name)
        may_change()
        view = service.update(name, patch)
        audit("deployment.update", name, **patch.model_dump(exclude_unset=True, mode="json"))
        wake()
        return view

    @api.post(
        "/deployments/{name}/scale", response_model=DeploymentView, summary="Set the number of replicas"
    )
    def scale_deployment(name: str, body: ScaleRequest) -> DeploymentView:
        name = visible(name)
        may_change()
        view = service.scale(name, body.replicas)
        audit("deployment.scale", name, replicas=body.replicas)
        wake()
        return view

    @api.delete("/deployments/{name}", status_code=204, summary="Delete a deployment; its replicas stop")
    def delete_deployment(name: str) -> Response:
        name = visible(name)
        may_change()
        service.delete(name)
        audit("deployment.delete", name)
        wake()
        return Response(status_code=204)

    @api.get(
        "/deployments/{name}/placement",
        response_model=ExplainView,
        summary="Where each replica is and why: every candidate device's verdict",
    )
    def explain_placement(name: str, limit: int = Query(5, ge=1, le=20)) -> ExplainView:
        name = visible(name)
        view = service.explain(name, limit)
        spread = routing(name)
        if spread is None:
            return view
        return view.model_copy(update={"routing": RoutingView.model_validate(spread)})

    @api.get(
        "/devices", response_model=list[DeviceView], summary="Devices, their health, drain state and load"
    )
    def list_devices() -> list[DeviceView]:
        return service.list_devices()

    @api.post(
        "/devices/{uid:path}/drain",
        response_model=DeviceView,
        summary="Drain a device: its replicas are placed elsewhere, then stopped here",
    )
    def drain_device(uid: str, body: DrainRequest | None = None) -> DeviceView:
        admin_only("drain devices")
        view = service.drain(uid, body.reason if body else None)
        audit("device.drain", uid)
        wake()
        return view

    @api.post(
        "/devices/{uid:path}/undrain", response_model=DeviceView, summary="Let a drained device take replicas"
    )
    def undrain_device(uid: str) -> DeviceView:
        admin_only("undrain devices")
        view = service.undrain(uid)
        audit("device.undrain", uid)
        wake()
        return view

    @api.get("/events", response_model=list[EventView], summary="What happened, oldest first")
    def list_events(
        deployment: str | None = None,
        device: str | None = None,
        # Event ids are INTEGER: a larger `after` is a 400, not a database error (kcloud.farm.bounds).
        after: int | None = Query(None, ge=0, le=INTEGER_MAX, description="only events with a larger id"),
        limit: int = Query(100, ge=1, le=1000),
    ) -> list[EventView]:
        principal = caller()
        if principal is not None and not principal.farm_wide:
            owned = [d.name for d in service.list_deployments(principal.tenant_name, all_tenants=False)]
            if deployment is not None:
                deployment = visible(deployment)
            return service.events(
                deployment=deployment, deployments=owned, device=device, after_id=after, limit=limit
            )
        return service.events(deployment=deployment, device=device, after_id=after, limit=limit)

    return api


__all__ = ["PREFIX", "NotFoundError", "build_api"]

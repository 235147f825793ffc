"""Reservations over the admin API (`/api/v1/reservations`): a tenant's virtual cluster.

An admin sets devices or whole nodes aside for one tenant; from then on that tenant's deployments
are placed only there and nobody else's are (`kcloud.farm.reservations` holds the rules, placement
applies them). The routes live here rather than beside the deployments API because a reservation
names a tenant, which only tenancy knows: the tenant is checked inside the control plane's own
transaction, so a tenant deleted at the same moment cannot keep a reservation.

Who may do what: admins create, list and delete; a tenant's keys (member or read-only) see their
own tenant's reservations and nothing of any other (404, as if it did not exist). Every change is
in the audit log (`reservation.create`, `reservation.delete`) and in the control plane's events.

The control plane is the one `kcloud.farm.controlplane.attach` put on the app; it must keep its
state in tenancy's database (as `kcloud up` runs it), or there is nothing to reserve.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Path, Request
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.responses import Response

from kcloud.errors import NotFoundError
from kcloud.farm.bounds import INTEGER_MAX
from kcloud.farm.spec import ReservationCreate, ReservationCreated, ReservationView
from kcloud.tenancy.api import PREFIX, _ctx, _refusals, _require_admin, _run, _scoped_tenant, _tenancy
from kcloud.tenancy.schema import Tenant

if TYPE_CHECKING:  # the running control plane is found on the app; only its type is named here
    from kcloud.farm.controlplane import ControlPlane

ReservationId = Annotated[int, Path(ge=1, le=INTEGER_MAX, description="the reservation's id")]


def _control_plane(request: Request) -> ControlPlane:
    control: ControlPlane | None = getattr(request.app.state, "control_plane", None)
    if control is None or control.db is not _tenancy(request).db:
        raise NotFoundError(
            "this server runs no control plane in its database, so it places nothing and has no "
            "reservations (`kcloud up` runs one)"
        )
    return control


def tenant_exists(tenant: str) -> Callable[[Session], None]:
    """The check `reserve` runs in its transaction: the tenant exists (its row locked, so that a
    concurrent delete of the tenant waits for the reservation and then refuses)."""

    def check(session: Session) -> None:
        found = session.scalar(select(Tenant.id).where(Tenant.name == tenant).with_for_update())
        if found is None:
            raise NotFoundError(
                f"tenant {tenant!r} not found; create it first (kcloud tenants create {tenant})")

    return check


def reservations_router() -> APIRouter:
    api = APIRouter(prefix=PREFIX, tags=["Tenancy (admin API)"])

    @api.post(
        "/reservations", response_model=ReservationCreated, status_code=201,
        summary="Reserve devices or nodes for a tenant: its deployments go only there, nobody else's do",
        responses=_refusals(400, 403, 404, 409),
    )
    async def create_reservation(request: Request, body: ReservationCreate) -> ReservationCreated:
        ctx = _ctx(request)
        ctx.audit("reservation.create", body.tenant, devices=body.devices, nodes=body.nodes, note=body.note)
        _require_admin(ctx, "reserve devices for a tenant")
        control = _control_plane(request)
        created: ReservationCreated = await _run(
            control.service.reserve, body, actor=ctx.principal.label, check=tenant_exists(body.tenant)
        )
        if ctx.audit_detail is not None:
            ctx.audit_detail.update(reservation=created.id, moving=created.moving)
        control.reconciler.wake()  # move the evicted replicas now, not at the next tick
        return created

    @api.get(
        "/reservations", response_model=list[ReservationView],
        summary="Reservations (a tenant's key sees its own)", responses=_refusals(404),
    )
    async def list_reservations(request: Request, tenant: str | None = None) -> list[ReservationView]:
        ctx = _ctx(request)
        scoped = _scoped_tenant(ctx, tenant)
        return await _run(_control_plane(request).service.list_reservations, scoped)

    @api.get(
        "/reservations/{reservation_id}", response_model=ReservationView, summary="One reservation",
        responses=_refusals(404),
    )
    async def get_reservation(request: Request, reservation_id: ReservationId) -> ReservationView:
        ctx = _ctx(request)
        view: ReservationView = await _run(_control_plane(request).service.get_reservation, reservation_id)
        if not ctx.principal.sees(view.tenant):
            raise NotFoundError(f"reservation {reservation_id} not found")
        return view

    @api.delete(
        "/reservations/{reservation_id}", status_code=204,
        summary="Delete a reservation: its devices take any tenant's replicas again (nothing moves)",
        responses=_refusals(403, 404),
    )
    async def delete_reservation(request: Request, reservation_id: ReservationId) -> Response:
        ctx = _ctx(request)
        ctx.audit("reservation.delete", str(reservation_id))
        _require_admin(ctx, "delete reservations")
        control = _control_plane(request)
        deleted: ReservationView = await _run(
            control.service.unreserve, reservation_id, actor=ctx.principal.label
        )
        ctx.audit("reservation.delete", str(reservation_id), tenant=deleted.tenant, devices=deleted.devices,
                  nodes=deleted.nodes)
        control.reconciler.wake()  # pending deployments may fit on the freed devices
        return Response(status_code=204)

    return api

"""Check slots taken in turns between tenants, so one tenant's queue cannot hold back another's."""

import asyncio

import pytest

from mlserver_mme.artifacts.fair_slots import FairSlots, tenant_of


def test_a_tenants_first_check_waits_for_one_slot_not_for_another_tenants_queue():
    async def scenario():
        slots, order = FairSlots(2), []
        release = asyncio.Event()

        async def check(tenant, number):
            async with slots.slot(tenant):
                order.append(f"{tenant}{number}")
                await release.wait()

        tasks = [asyncio.create_task(check("a", number)) for number in range(6)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(check("b", 0)))  # queued after five of a's
        for _ in range(10):
            await asyncio.sleep(0)
        assert order == ["a0", "a1"]
        release.set()
        await asyncio.gather(*tasks)
        return order

    order = asyncio.run(scenario())
    assert order.index("b0") == 3, order  # after the one check of a's next in turn; FIFO would make it 6
    assert sorted(order) == sorted([f"a{number}" for number in range(6)] + ["b0"])


def test_a_cancelled_waiter_neither_takes_nor_loses_a_slot():
    async def scenario():
        slots = FairSlots(1)
        held = asyncio.Event()

        async def hold():
            async with slots.slot("a"):
                await held.wait()

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0)
        waiter = asyncio.create_task(hold())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        held.set()
        await holder
        async with slots.slot("b"):  # the slot came back: taken at once
            return slots._free

    assert asyncio.run(scenario()) == 0


@pytest.mark.parametrize("target, tenant", [("a/b/m.tar.gz", "a"), ("m.tar.gz", ""), ("x/m", "x")])
def test_the_tenant_is_the_top_level_folder(target, tenant):
    assert tenant_of(target) == tenant

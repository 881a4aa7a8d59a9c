//! Region selection for new flows, and what the controller says of regions.

use crate::{
    family::Family,
    maps::{REGIONS, SELECTION},
};
use redirector_common::{
    backend_index, selection_slot, Address, Backend, FlowKey, RegionState, Service, NO_REGION,
};

/// The region the service's live selection table gives this flow. IPv6
/// runs it in a frame of its own: inlined, LLVM keeps the key's words it
/// hashed in registers for the rewrites that follow, and spills them.
#[inline(always)]
pub fn select_region<A: Address>(service: &Service, key: &FlowKey<A>) -> Option<u8> {
    let table = SELECTION.get(service.selection_index())?;
    // LLVM turns `% SELECTION_SLOTS` into a multiply-shift whose range the
    // verifier cannot see, and then drops the bounds check as redundant.
    // Reading the slot back through memory keeps the check for the verifier.
    let slot = selection_slot(key);
    let slot = unsafe { core::ptr::read_volatile(&slot) };
    let region = *table.slots.get(slot)?;
    (region != NO_REGION).then_some(region)
}

/// Where `region_id` serves the service; None if it does not.
#[inline(always)]
pub fn backend<F: Family>(service_id: u32, region_id: u8) -> Option<&'static Backend<F::Addr>> {
    F::backends()
        .get(backend_index(service_id, region_id))
        .filter(|b| !b.addr.is_unspecified())
}

#[inline(always)]
pub fn region_is_down(region_id: u8) -> bool {
    REGIONS
        .get(region_id as u32)
        .is_none_or(|r| r.state == RegionState::Down as u8)
}

//! Per-CPU counters: no atomics on the packet path.

use crate::maps::{REASONS, REGION_COUNTERS, SERVICE_COUNTERS};
use redirector_common::{Counters, Reason};

#[inline(always)]
pub fn count_reason(reason: Reason) {
    if let Some(counter) = REASONS.get_ptr_mut(reason as u32) {
        unsafe { *counter += 1 };
    }
}

#[derive(Clone, Copy)]
pub enum Direction {
    ToRegion { new_flow: bool },
    ToClient,
}

#[inline(always)]
pub fn count_traffic(service_id: u32, region_id: u8, len: u64, direction: Direction) {
    let add = |c: *mut Counters| unsafe {
        match direction {
            Direction::ToRegion { new_flow } => {
                (*c).packets += 1;
                (*c).bytes += len;
                (*c).new_flows += new_flow as u64;
            }
            Direction::ToClient => {
                (*c).reply_packets += 1;
                (*c).reply_bytes += len;
            }
        }
    };
    if let Some(c) = REGION_COUNTERS.get_ptr_mut(region_id as u32) {
        add(c);
    }
    if let Some(c) = SERVICE_COUNTERS.get_ptr_mut(service_id) {
        add(c);
    }
}
